"""Authentication for HTML pages and APIs: session login, HTTP Basic, or an API token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time
from functools import wraps

from django.contrib.auth import authenticate, get_user_model
from django.http import HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from .models import ApiToken, hash_token
from .roles import has_role
from .throttle import Throttled, address_of, wait_seconds

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# what a cross-site HTML form can send without a CORS preflight
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


# SHA-256 of a verified Basic header → (user id, until): DICOMweb clients send the same header
# with every frame request, and one password hash costs ~0.3 s of CPU. A changed password or a
# deactivated user stops working within BASIC_CACHE_SECONDS.
BASIC_CACHE_SECONDS = 60
_verified: dict[str, tuple[int, float]] = {}
_verified_lock = threading.Lock()


def _basic_user(request, credentials: str):
    digest = hashlib.sha256(credentials.strip().encode()).hexdigest()
    with _verified_lock:
        hit = _verified.get(digest)
    if hit is not None and hit[1] > time.monotonic():
        user = get_user_model().objects.filter(pk=hit[0], is_active=True).first()
        if user is not None:
            return user
    try:
        username, _, password = base64.b64decode(credentials.strip()).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    seconds = wait_seconds(username, address_of(request))
    if seconds:
        raise Throttled(seconds)
    user = authenticate(request, username=username, password=password)
    if user is None or not user.is_active:
        return None
    with _verified_lock:
        if len(_verified) > 10_000:
            _verified.clear()
        _verified[digest] = (user.pk, time.monotonic() + BASIC_CACHE_SECONDS)
    return user


def _from_header(request):
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        return _basic_user(request, credentials)
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
            try:
                user = _from_header(request)
            except Throttled as exc:
                response = JsonResponse({"error": str(exc)}, status=429)
                response["Retry-After"] = str(exc.seconds)
                return response
            if user is None:
                return _unauthorized(request, "the credentials in the Authorization header are not valid")
            if request.method not in SAFE_METHODS and request.content_type in FORM_TYPES:
                # a browser holding Basic credentials could be made to send a cross-site form here
                return JsonResponse({"error": "send a JSON (or DICOM) body, not a form"}, status=415)
            request.user = user
        elif request.user.is_authenticated:
            if request.method not in SAFE_METHODS:
                failure = _csrf_failure(request)
                if failure is not None:
                    return JsonResponse({"error": "CSRF check failed; reload the page and try again"}, status=403)
        else:
            return _unauthorized(request, "log in, or send HTTP Basic credentials or an API token")
        if not has_role(request.user, role):
            return JsonResponse({"error": f"this needs the {role} role; ask an administrator"}, status=403)
        return view(request, *args, **kwargs)

    return wrapper


def _unauthorized(request, message: str) -> HttpResponse:
    """401; the Basic challenge only for programs: a browser would ask for a password, keep it,
    and send it on every later request, cross-site forms included."""
    response = JsonResponse({"error": message}, status=401)
    browser = "HTTP_SEC_FETCH_MODE" in request.META or "text/html" in request.META.get("HTTP_ACCEPT", "")
    if not browser:
        response["WWW-Authenticate"] = 'Basic realm="Sonoloop", charset="UTF-8"'
    return response
