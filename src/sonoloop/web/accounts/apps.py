from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "sonoloop.web.accounts"
    label = "accounts"
    verbose_name = "Accounts and API tokens"
