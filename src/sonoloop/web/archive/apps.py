from django.apps import AppConfig


class ArchiveConfig(AppConfig):
    name = "sonoloop.web.archive"
    label = "archive"
    verbose_name = "DICOM archive"
