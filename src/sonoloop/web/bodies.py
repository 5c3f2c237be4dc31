"""Request bodies: limited before they are read, and read only once the sender is known.

Django reads a body when something first asks for it — the CSRF middleware asks for every
form POST, before any view has checked who is sending. So a body larger than
``SMALL_BODY_BYTES`` is refused here (413) unless it goes to one of the few endpoints that
take large bodies *and* its sender is already logged in (a session), or it carries an
Authorization header to an endpoint whose body nothing reads before the view verifies it.
Those views then read at most their own limit with :func:`read_body`. Chunked bodies
(STOW-RS clients stream them) are never buffered before that.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.http import JsonResponse

SMALL_BODY_BYTES = 1024 * 1024  # a login form, a status change, a retraining request

# Endpoints that take large bodies: STOW-RS, the upload page, annotation saves.
LARGE_BODY_PATHS = re.compile(r"^/(dicomweb/studies(/[^/]+)?|upload/|api/instances/[^/]+/annotations)$")
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class BodyTooLarge(ValueError):
    """HTTP 413; the message says the limit."""


def large_body_limit() -> int:
    return settings.CONFIG.max_instance_mb * 1024 * 1024


class RequestBodyLimit:
    """Middleware between authentication and CSRF: refuses large bodies from unknown senders."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return JsonResponse({"error": "the Content-Length header is not a number"}, status=400)
        if length > SMALL_BODY_BYTES and not self._may_send_large(request, length):
            return JsonResponse({"error": f"the request body is {length} bytes; at most {SMALL_BODY_BYTES} are "
                                          f"accepted here (larger ones only for logged-in users' uploads)"},
                                status=413)
        return self.get_response(request)

    @staticmethod
    def _may_send_large(request, length: int) -> bool:
        if not LARGE_BODY_PATHS.match(request.path_info) or length > large_body_limit():
            return False
        if request.user.is_authenticated:
            return True
        # verified by the view before it reads the body, as long as nothing parses it earlier
        return "HTTP_AUTHORIZATION" in request.META and request.content_type not in _FORM_TYPES


def read_body(request, limit: int) -> bytes:
    """At most ``limit`` bytes of the body (also a chunked one), or :class:`BodyTooLarge`."""
    environ = request.META
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read(limit + 1)  # gunicorn de-chunks; Django would see nothing
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > limit:
            raise BodyTooLarge(f"the request body is {length} bytes; at most {limit} are accepted")
        body = request.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"the request body is larger than the {limit} bytes accepted")
    return body
