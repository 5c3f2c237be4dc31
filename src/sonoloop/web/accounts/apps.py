from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "sonoloop.web.accounts"
    label = "accounts"
    verbose_name = "Accounts and API tokens"

    def ready(self):
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_login_failed
        from django.db.models.signals import post_save

        from .initial import forget_initial_password
        from .throttle import on_login_failed

        user_login_failed.connect(on_login_failed, dispatch_uid="accounts-count-failed-sign-ins")
        post_save.connect(forget_initial_password, sender=get_user_model(),
                          dispatch_uid="accounts-forget-initial-password")
