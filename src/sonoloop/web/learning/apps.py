from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "sonoloop.web.learning"
    label = "learning"
    verbose_name = "Retraining from expert annotations"

    def ready(self):
        from sonoloop.web.registry.evaluation import version_evaluated

        from .services import annotated_dice_store

        version_evaluated.connect(annotated_dice_store, dispatch_uid="learning-annotated-dice")
