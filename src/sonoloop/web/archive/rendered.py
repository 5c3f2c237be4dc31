"""WADO-RS rendered and thumbnail resources (PS3.18 8.3.5 and 8.3.6), which viewers ask for:
frames as consumer images (JPEG by default, PNG on request), from the preview cache."""

from __future__ import annotations

import io
import itertools

from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods
from PIL import Image

from sonoloop.dicom.pixels import NoPixelData
from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.audit.services import actor_of

from . import previews, trail
from .dicomweb import instances_at, multipart_response
from .presenting import instance_preview_png

THUMBNAIL = 128


def _media(request) -> str | None:
    """image/jpeg (the default) or image/png, as the Accept header prefers; None: neither."""
    accept = request.headers.get("Accept", "") or "*/*"
    for media_range in accept.split(","):
        media, *params = (p.strip() for p in media_range.split(";"))
        if media == "multipart/related":  # the type of its parts decides
            media = next((p.partition("=")[2].strip('"') for p in params if p.startswith("type=")), "*/*")
        if media in ("image/jpeg", "image/png"):
            return media
        if media in ("*/*", "image/*"):
            return "image/jpeg"
    return None


def _size(request, default: int) -> int:
    """The long side asked for with ``viewport=columns,rows`` (at most the stored size)."""
    try:
        return max(16, max(int(v) for v in request.GET.get("viewport", "").split(",") if v.strip()))
    except ValueError:
        return default


def _encode(png: bytes, media: str, quality: int) -> bytes:
    if media == "image/png":
        return png
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _images(request, study, series, instance, frame_list):
    """The (instance, frame) pairs a rendered or thumbnail request names, or an error response."""
    items = [i for i in instances_at(study, series, instance) if i.rows]
    if not items:
        return _error(404, "no matching instance with an image")
    if frame_list is None:
        return [(i, 1) for i in items]
    try:
        numbers = [int(n) for n in frame_list.split(",")]
    except ValueError:
        return _error(400, "frame numbers must be whole numbers separated by commas")
    item = items[0]
    if any(not 1 <= n <= (item.number_of_frames or 1) for n in numbers):
        return _error(404, f"this instance has frames 1 to {item.number_of_frames or 1}")
    return [(item, n) for n in numbers[:256]]


def _answer(request, study, series, instance, frame_list, *, thumbnail: bool):
    media = _media(request)
    if media is None:
        return _error(406, "rendered images and thumbnails are image/jpeg or image/png")
    chosen = _images(request, study, series, instance, frame_list)
    if isinstance(chosen, JsonResponse):
        return chosen
    size = _size(request, THUMBNAIL if thumbnail else previews.FULL_SIZE)
    trail.record_read(actor_of(request), chosen[0][0].series.study, "WADO-RS thumbnail" if thumbnail else "WADO-RS rendered")
    if thumbnail:
        chosen = chosen[:1]  # one image stands for the study, series or instance
    try:
        first = _encode(instance_preview_png(chosen[0][0], chosen[0][1], size), media, 85 if thumbnail else 92)
    except NoPixelData:
        return _error(400, "this instance has no pixel data")
    if len(chosen) == 1:
        response = HttpResponse(first, content_type=media)
        response["Cache-Control"] = "private, max-age=3600"
        return response
    rest = (("", _encode(instance_preview_png(i, n, size), media, 92)) for i, n in chosen[1:])
    return multipart_response(itertools.chain([("", first)], rest), media)


@api_login_required
@require_http_methods(["GET"])
def rendered(request, study, series=None, instance=None, frame_list=None):
    return _answer(request, study, series, instance, frame_list, thumbnail=False)


@api_login_required
@require_http_methods(["GET"])
def thumbnail(request, study, series=None, instance=None, frame_list=None):
    return _answer(request, study, series, instance, frame_list, thumbnail=True)
