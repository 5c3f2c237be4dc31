from django.apps import AppConfig


class ArchiveConfig(AppConfig):
    name = "sonoloop.web.archive"
    label = "archive"
    verbose_name = "DICOM archive"

    def ready(self):
        from . import lookups  # noqa: F401 - the wildcard lookups, and case folding on each SQLite connection
