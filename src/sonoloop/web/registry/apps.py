from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "sonoloop.web.registry"
    label = "registry"
    verbose_name = "Model versions and promotion"
