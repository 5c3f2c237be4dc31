"""Slow password guessing down: failed sign-ins per user name and per address, in the database.

Every sign-in path (the login page, the admin's, HTTP Basic) goes through Django's
``authenticate``; :class:`ThrottledModelBackend` refuses before hashing anything while a
user name or an address has failed too often in the window, and the ``user_login_failed``
signal counts each failure.
"""

from __future__ import annotations

import math
from datetime import timedelta

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from .models import AuthFailure

WINDOW = timedelta(minutes=15)
LIMITS = {"user": 10, "addr": 50}  # failures per window before that user name / address waits


class Throttled(PermissionDenied):
    def __init__(self, seconds: int):
        super().__init__(f"too many failed sign-ins; try again in {math.ceil(seconds / 60)} minutes")
        self.seconds = seconds


def _keys(username: str, address: str) -> list[str]:
    keys = [f"user:{username.strip().lower()[:150]}"] if username else []
    return keys + ([f"addr:{address}"] if address else [])


def address_of(request) -> str:
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def wait_seconds(username: str, address: str) -> int:
    """0, or how long this user name or address must wait before it may try again."""
    now = timezone.now()
    longest = 0
    for row in AuthFailure.objects.filter(key__in=_keys(username, address), window_started_at__gt=now - WINDOW):
        if row.failures >= LIMITS[row.key.split(":", 1)[0]]:
            longest = max(longest, int((row.window_started_at + WINDOW - now).total_seconds()) + 1)
    return longest


def record_failure(username: str, address: str) -> None:
    now = timezone.now()
    for key in _keys(username, address):
        with transaction.atomic():
            updated = AuthFailure.objects.filter(key=key, window_started_at__gt=now - WINDOW).update(
                failures=F("failures") + 1)
            if not updated:
                try:
                    with transaction.atomic():
                        AuthFailure.objects.update_or_create(key=key, defaults={"failures": 1, "window_started_at": now})
                except IntegrityError:
                    AuthFailure.objects.filter(key=key).update(failures=F("failures") + 1)


def record_success(username: str) -> None:
    AuthFailure.objects.filter(key__in=_keys(username, "")).delete()


def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    record_failure(credentials.get("username", ""), address_of(request))


class ThrottledModelBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        seconds = wait_seconds(username or "", address_of(request))
        if seconds:
            raise Throttled(seconds)  # authenticate() stops here: no password hash is computed
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is not None:
            record_success(username or "")
        return user
