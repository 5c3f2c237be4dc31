"""The editor page and the annotation API. Thin: parse, check the role, call a service."""

from __future__ import annotations

import json
import logging

from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from sonoloop.web.bodies import BodyTooLarge, read_body
from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.accounts.roles import has_role, role_required
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.panels import Panel
from sonoloop.web.archive.presenting import wadouri_url
from sonoloop.web.errors import json_errors

from . import document, services
from .models import Annotation

log = logging.getLogger("sonoloop.web")

MAX_BODY_BYTES = 64 * 1024 * 1024  # a 120-frame cine of 800×600 masks is about 2 MB of RLE


def _editable(instance: Instance) -> bool:
    return bool(instance.rows and instance.columns) and instance.series.modality not in ("SEG", "SR")


def instance_panel(request, instance: Instance):
    if not _editable(instance):
        return None
    annotations = instance.annotations.select_related("author")[:20]
    return Panel("annotations/_instance_panel.html", {"annotations": annotations,
                                                      "editor_url": reverse("annotations:editor", args=[instance.sop_instance_uid])})


def player_panel(request, instance: Instance):
    """The image page's loop with the newest AI segmentation over it, at the file's frame rate,
    ED and ES marked; it takes the place of the still frame."""
    if not _editable(instance):
        return None
    result = instance.analysis_results.first()
    if result is None:
        return None
    frames = instance.number_of_frames or 1
    try:
        frame = max(1, min(int(request.GET.get("frame", 1)), frames))
    except ValueError:
        frame = 1
    uid = instance.sop_instance_uid
    editor_url = reverse("annotations:editor", args=[uid])
    beats = [{"ed": b.get("ed"), "es": b.get("es")} for b in (result.measurements or {}).get("beats", [])]
    return Panel("annotations/_player.html", {
        "frames": frames,
        "still": f"{reverse('archive:preview', args=[uid])}?frame={frame}&size=768",
        "editor_url": editor_url,
        "frame": frame,
        "config": {
            "wadouri": wadouri_url(instance, request.build_absolute_uri("/")),
            "frames": frames,
            "rows": instance.rows,
            "columns": instance.columns,
            "masks_api": reverse("annotations:api-ai-masks", args=[uid, result.version]),
            "result": f"AI result v{result.version}: {result.model_name} {result.model_version}",
            "structures": document.structures(),
            "beats": beats,
            "editor_url": editor_url,
            "frame": frame,
        },
    }, draws_image=True)


@role_required("reviewer")
def review_queue(request):
    """Submitted annotations from others, oldest first, with the AI-vs-expert agreement."""
    waiting = (Annotation.objects.filter(status=Annotation.SUBMITTED, instance__isnull=False)
               .exclude(author=request.user)
               .select_related("author", "instance__series__study__patient")
               .order_by("status_changed_at", "created_at", "pk"))
    rows = [(a, [(name, (a.agreement.get("dice") or {}).get(name)) for name in document.CLASSES.values()])
            for a in waiting[:200]]
    return render(request, "annotations/review_queue.html",
                  {"rows": rows, "structures": list(document.CLASSES.values()), "total": waiting.count()})


def instance_api_section(request, instance: Instance) -> dict:
    if not _editable(instance):
        return {"editor_url": None, "annotations": []}
    base = request.build_absolute_uri("/")
    return {
        "editor_url": request.build_absolute_uri(reverse("annotations:editor", args=[instance.sop_instance_uid])),
        "annotations": [services.annotation_summary(a, base)
                        for a in instance.annotations.select_related("author", "parent", "started_from")],
    }


@role_required("viewer")
def editor(request, sop_uid: str):
    instance = get_object_or_404(Instance.objects.select_related("series__study__patient"), sop_instance_uid=sop_uid)
    if not _editable(instance):
        return render(request, "annotations/not_editable.html", {"instance": instance}, status=404)
    return render(request, "annotations/editor.html", {
        "instance": instance,
        "study": instance.series.study,
        "patient": instance.series.study.patient,
        "structures": document.structures(),
        "config": {
            "structures": document.structures(),
            "instance_api": reverse("archive:api-instance", args=[sop_uid]),
            "annotations_api": reverse("annotations:api-instance-annotations", args=[sop_uid]),
            "ai_masks_api": reverse("annotations:api-ai-masks", args=[sop_uid, 0]).removesuffix("0/masks"),
            "annotation_api": reverse("annotations:api-annotation", args=[0]).removesuffix("0"),
            "instance_page": reverse("archive:instance", args=[sop_uid]),
            "csrf_token": get_token(request),
            "can_save": has_role(request.user, "annotator"),
            "can_review": has_role(request.user, "reviewer"),
            "user": request.user.get_username(),
            "open_version": request.GET.get("version", ""),
            "open_frame": request.GET.get("frame", ""),
            "compare": request.GET.get("compare") == "1",  # the AI result beside the opened annotation
        },
    })


def _instance(sop_uid: str) -> Instance | None:
    return Instance.objects.select_related("series__study__patient").filter(sop_instance_uid=sop_uid).first()


def _not_found(sop_uid: str) -> JsonResponse:
    return JsonResponse({"error": f"no instance with SOP Instance UID {sop_uid}"}, status=404)


def _json_body(request) -> tuple[dict | None, JsonResponse | None]:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None, JsonResponse({"error": "the Content-Length header is not a number"}, status=400)
    if length > MAX_BODY_BYTES:
        return None, JsonResponse({"error": f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted"},
                                  status=413)
    if request.content_type != "application/json":
        return None, JsonResponse({"error": "send the annotation as application/json"}, status=415)
    try:
        return json.loads(read_body(request, MAX_BODY_BYTES)), None
    except BodyTooLarge as exc:
        return None, JsonResponse({"error": str(exc)}, status=413)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, JsonResponse({"error": f"the body is not valid JSON: {exc}"}, status=400)
    except RecursionError:
        return None, JsonResponse({"error": "the body is not valid JSON: nested too deeply"}, status=400)


@api_login_required
@json_errors
def api_instance_annotations(request, sop_uid: str):
    instance = _instance(sop_uid)
    if instance is None:
        return _not_found(sop_uid)
    base = request.build_absolute_uri("/")
    if request.method == "GET":
        annotations = instance.annotations.select_related("author", "parent", "started_from")
        return JsonResponse({"instance": sop_uid,
                             "annotations": [services.annotation_summary(a, base) for a in annotations]})
    if request.method != "POST":
        return JsonResponse({"error": "use GET or POST"}, status=405)
    if not has_role(request.user, "annotator"):
        return JsonResponse({"error": "saving annotations needs the annotator role; ask an administrator"}, status=403)
    if not _editable(instance):
        return JsonResponse({"error": "this instance has no image to annotate"}, status=400)
    body, error = _json_body(request)
    if error:
        return error
    annotation = services.annotation_create(instance, request.user, body, address=_address(request))
    return JsonResponse(services.annotation_summary(annotation, base), status=201)


def _address(request) -> str:
    """Who did it, for the access trail (behind a proxy: the address it reports)."""
    return request.META.get("REMOTE_ADDR", "")


def _annotation(pk: int) -> Annotation | None:
    return Annotation.objects.select_related("instance", "author", "parent", "started_from").filter(pk=pk).first()


@api_login_required
def api_annotation(request, pk: int):
    annotation = _annotation(pk)
    if annotation is None:
        return JsonResponse({"error": f"there is no annotation {pk}"}, status=404)
    if request.method != "GET":
        return JsonResponse({"error": "annotations are immutable: POST a new version to "
                                      "/api/instances/<uid>/annotations"}, status=405)
    summary = services.annotation_summary(annotation, request.build_absolute_uri("/"))
    summary["document"] = services.annotation_document(annotation)
    return JsonResponse(summary)


@api_login_required
@json_errors
def api_annotation_status(request, pk: int):
    if request.method != "POST":
        return JsonResponse({"error": "use POST with {\"status\": \"submitted\" | \"approved\" | \"draft\"}"},
                            status=405)
    annotation = _annotation(pk)
    if annotation is None:
        return JsonResponse({"error": f"there is no annotation {pk}"}, status=404)
    body, error = _json_body(request)
    if error:
        return error
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        return JsonResponse({"error": "send {\"status\": …, \"note\": …}"}, status=400)
    note = body.get("note") or ""
    if not isinstance(note, str):
        return JsonResponse({"error": "note must be text"}, status=400)
    annotation = services.annotation_status_set(annotation, request.user, body["status"], note,
                                                address=_address(request))
    return JsonResponse(services.annotation_summary(annotation, request.build_absolute_uri("/")))


@api_login_required
@json_errors
def api_annotation_export(request, pk: int):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    annotation = _annotation(pk)
    if annotation is None:
        return JsonResponse({"error": f"there is no annotation {pk}"}, status=404)
    uid = services.annotation_export_seg(annotation, request.user, address=_address(request))
    return JsonResponse({"segmentation": uid, "annotation": annotation.pk}, status=201)


@api_login_required
def api_ai_masks(request, sop_uid: str, version: int):
    instance = _instance(sop_uid)
    if instance is None:
        return _not_found(sop_uid)
    result = instance.analysis_results.filter(version=version).first()
    if result is None:
        return JsonResponse({"error": f"this instance has no AI result version {version}"}, status=404)
    return JsonResponse(services.ai_masks(result))
