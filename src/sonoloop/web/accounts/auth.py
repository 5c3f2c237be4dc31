"""Authentication for HTML pages and APIs: session login, HTTP Basic, or an API token."""

from __future__ import annotations

import base64
import binascii
from functools import wraps

from django.contrib.auth import authenticate
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from .models import ApiToken, hash_token
from .roles import has_role


def _from_header(request):
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            username, _, password = base64.b64decode(credentials.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = authenticate(request, username=username, password=password)
        return user if user is not None and user.is_active else None
    if scheme in ("token", "bearer"):
        token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(credentials.strip())).first()
        if token is None or not token.user.is_active:
            return None
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user
    return None


def _csrf_failure(request):
    reason = CsrfViewMiddleware(lambda r: None).process_view(request, None, (), {})
    return reason


def api_login_required(view=None, *, role: str = "viewer"):
    """Session users (with CSRF on unsafe methods), or Basic / Token users (no CSRF), with ``role``.

    Unauthenticated requests get a 401 JSON message with a Basic challenge; users without
    the role a 403 saying which role it takes.
    """
    if view is None:
        return lambda v: api_login_required(v, role=role)

    @csrf_exempt
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if "HTTP_AUTHORIZATION" in request.META:
            user = _from_header(request)
            if user is None:
                return _unauthorized("the credentials in the Authorization header are not valid")
            request.user = user
        elif request.user.is_authenticated:
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                failure = _csrf_failure(request)
                if failure is not None:
                    return JsonResponse({"error": "CSRF check failed; reload the page and try again"}, status=403)
        else:
            return _unauthorized("log in, or send HTTP Basic credentials or an API token")
        if not has_role(request.user, role):
            return JsonResponse({"error": f"this needs the {role} role; ask an administrator"}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


def _unauthorized(message: str) -> HttpResponse:
    response = JsonResponse({"error": message}, status=401)
    response["WWW-Authenticate"] = 'Basic realm="Sonoloop", charset="UTF-8"'
    return response
