"""Service errors and the one place they become HTTP responses.

Services raise these (or their own subclasses) with a message for people; JSON views are
wrapped in :func:`json_errors`, which answers ``{"error": message}`` with the error's status.
Nothing here imports Django at module level, so pure modules (the annotation document) can
raise them too.
"""

from __future__ import annotations

import functools


class ServiceError(Exception):
    """A request the service cannot carry out; the message says why."""

    http_status = 400


class BadRequest(ServiceError, ValueError):
    http_status = 400


class NotAllowed(ServiceError, PermissionError):
    http_status = 403


class NotFound(ServiceError, LookupError):
    http_status = 404


class Conflict(ServiceError):
    """The request is well formed but the state does not allow it (now)."""

    http_status = 409


class TooLarge(ServiceError, ValueError):
    http_status = 413


def json_errors(view):
    """Answer a ServiceError raised by ``view`` with its status and message."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        from django.http import JsonResponse

        try:
            return view(request, *args, **kwargs)
        except ServiceError as exc:
            return JsonResponse({"error": str(exc)}, status=exc.http_status)

    return wrapped
