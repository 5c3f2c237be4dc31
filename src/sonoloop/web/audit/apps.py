from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "sonoloop.web.audit"
    label = "audit"
    verbose_name = "Access trail"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from . import services

        user_logged_in.connect(services.on_logged_in, dispatch_uid="audit-logged-in")
        user_login_failed.connect(services.on_login_failed, dispatch_uid="audit-login-failed")
