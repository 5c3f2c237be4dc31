from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "sonoloop.web.learning"
    label = "learning"
    verbose_name = "Model versions, retraining and promotion"

    def ready(self):
        from sonoloop.web.analysis.services import MODEL_FOLDER_PROVIDERS

        from .services import active_model_folder

        if active_model_folder not in MODEL_FOLDER_PROVIDERS:
            MODEL_FOLDER_PROVIDERS.append(active_model_folder)
