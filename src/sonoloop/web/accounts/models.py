import hashlib
import secrets

from django.conf import settings
from django.db import models


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A per-user token for scripts: ``Authorization: Token <token>``. Only its hash is kept."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for.")
    prefix = models.CharField(max_length=8, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.name} ({self.prefix}…) for {self.user}"

    @classmethod
    def issue(cls, user, name: str) -> tuple["ApiToken", str]:
        token = "sl_" + secrets.token_urlsafe(32)
        return cls.objects.create(user=user, name=name, prefix=token[:8], token_hash=hash_token(token)), token


class AuthFailure(models.Model):
    """Failed sign-ins counted per user name and per address (``user:alice``, ``addr:10.0.0.9``)
    over a window, so that guessing is slow for every process serving the site."""

    key = models.CharField(max_length=200, unique=True)
    failures = models.PositiveIntegerField(default=0)
    window_started_at = models.DateTimeField()

    def __str__(self):
        return f"{self.key}: {self.failures} failures since {self.window_started_at:%Y-%m-%d %H:%M}"
