from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "sonoloop.web.accounts"
    label = "accounts"
    verbose_name = "Accounts and API tokens"

    def ready(self):
        from django.contrib.auth.signals import user_login_failed

        from .throttle import on_login_failed

        user_login_failed.connect(on_login_failed, dispatch_uid="accounts-count-failed-sign-ins")
