"""The Django project: settings, URLs and one app per domain (archive, accounts, ...)."""
