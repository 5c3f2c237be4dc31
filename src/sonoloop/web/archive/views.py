"""HTML pages and the JSON API of the archive. Thin: parse, check, call a service, render."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from sonoloop.dicom.instance import InvalidInstance, sop_class_name
from sonoloop.dicom.pixels import NoPixelData
from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.accounts.roles import role_required
from sonoloop.web.audit.services import actor_of
from sonoloop.web.bodies import large_body_limit

from . import services, trail
from .panels import STUDY_LIST_FILTERS, instance_api_sections, instance_panels, study_list_columns, study_panels
from .models import Instance, Patient, Series, Study

log = logging.getLogger("sonoloop.web")

PAGE_SIZE = 25


@role_required("viewer")
def study_list(request):
    """The worklist: studies newest first, searched, filtered by what other apps offer (needs
    review, low EF, AI failed …) and annotated per page with their columns (AI state, EF …)."""
    q = request.GET.get("q", "").strip()
    date_from = request.GET.get("from", "").replace("-", "").strip()
    date_to = request.GET.get("to", "").replace("-", "").strip()
    modality = request.GET.get("modality", "").strip().upper()
    show = request.GET.get("show", "")
    studies = services.with_counts(services.present_only(Study.objects.select_related("patient"), "STUDY"), "STUDY")
    studies = studies.order_by("-study_date", "-study_time", "-id")
    if q:
        studies = studies.filter(
            Q(patient__patient_name__icontains=q)
            | Q(patient__patient_id__icontains=q)
            | Q(accession_number__icontains=q)
            | Q(study_description__icontains=q)
            | Q(study_instance_uid=q)
        )
    if date_from:
        studies = studies.filter(study_date__gte=date_from)
    if date_to:
        studies = studies.filter(study_date__lte=date_to)
    if modality:
        studies = studies.filter(modalities__contains=modality)
    if show in STUDY_LIST_FILTERS:
        studies = STUDY_LIST_FILTERS[show][1](studies)
    page = Paginator(studies, PAGE_SIZE).get_page(request.GET.get("page"))
    columns = study_list_columns(page.object_list)
    rows = [(study, columns.get(study.pk, {})) for study in page]
    params = request.GET.copy()
    params.pop("page", None)
    context = {"page": page, "rows": rows, "q": q, "date_from": request.GET.get("from", ""),
               "date_to": request.GET.get("to", ""), "modality": modality, "show": show,
               "filters": [(name, label) for name, (label, _) in STUDY_LIST_FILTERS.items()],
               "in_progress": any(c.get("ai_state") in ("queued", "running") for c in columns.values()),
               "querystring": params.urlencode()}
    if request.GET.get("rows") == "1":  # the running jobs' rows, refreshed by the page itself
        return render(request, "archive/_study_rows.html", context)
    return render(request, "archive/study_list.html", context)


@role_required("viewer")
def patient_detail(request, pk: int):
    patient = get_object_or_404(Patient, pk=pk)
    trail.record_read(actor_of(request), None, "patient page", patient=patient)
    present = Q(series__instances__rejected_for="")
    studies = services.present_only(patient.studies.all(), "STUDY").annotate(
        n_series=Count("series", distinct=True, filter=present), n_instances=Count("series__instances", filter=present))
    return render(request, "archive/patient_detail.html", {"patient": patient, "studies": studies})


@role_required("viewer")
def study_detail(request, study_uid: str):
    study = get_object_or_404(Study.objects.select_related("patient"), study_instance_uid=study_uid)
    trail.record_read(actor_of(request), study, "study page")
    series = services.present_only(study.series.all(), "SERIES").annotate(
        n_instances=Count("instances", filter=Q(instances__rejected_for="")))
    firsts = {s.pk: s.instances.order_by("instance_number", "pk").first() for s in series}
    rows = [(s, firsts[s.pk]) for s in series]
    return render(request, "archive/study_detail.html", {"study": study, "patient": study.patient, "rows": rows,
                                                         "panels": study_panels(request, study)})


@role_required("viewer")
def series_detail(request, series_uid: str):
    series = get_object_or_404(Series.objects.select_related("study__patient"), series_instance_uid=series_uid)
    trail.record_read(actor_of(request), series.study, "series page")
    page = Paginator(series.instances.all(), 60).get_page(request.GET.get("page"))
    return render(
        request,
        "archive/series_detail.html",
        {"series": series, "study": series.study, "patient": series.study.patient, "page": page},
    )


@role_required("admin")
@require_http_methods(["POST"])
def study_delete(request, study_uid: str):
    """Delete a study with its files and results; asked for on the study page, with a reason."""
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Say why the study is deleted (the reason goes to the access trail).")
        return redirect("archive:study", study_uid=study_uid)
    try:
        removed = services.study_remove(study_uid, actor=actor_of(request), reason=reason)
    except services.RemovalError as exc:
        raise Http404(str(exc)) from None
    messages.success(request, f"Study {study_uid} deleted: {removed.instances} instances and "
                              f"{removed.derived} objects made from them (SEG, SR).")
    return redirect("archive:studies")


def _instance_or_404(sop_uid: str) -> Instance:
    return get_object_or_404(Instance.objects.select_related("series__study__patient"), sop_instance_uid=sop_uid)


@role_required("viewer")
def instance_detail(request, sop_uid: str):
    instance = _instance_or_404(sop_uid)
    try:
        frame = max(1, min(int(request.GET.get("frame", 1)), instance.number_of_frames or 1))
    except ValueError:
        frame = 1
    trail.record_read(actor_of(request), instance.series.study, "image page")
    panels = instance_panels(request, instance)
    return render(
        request,
        "archive/instance_detail.html",
        {
            "instance": instance,
            "series": instance.series,
            "study": instance.series.study,
            "patient": instance.series.study.patient,
            "sop_class_name": sop_class_name(instance.sop_class_uid),
            "frame": frame,
            "attributes": services.instance_attributes(instance),
            "panels": [p for p in panels if not p.draws_image],
            "image_panel": next((p for p in panels if p.draws_image), None),
            "refresh_seconds": min((p.refresh_seconds for p in panels if p.refresh_seconds), default=None),
        },
    )


@role_required("viewer")
def instance_preview(request, sop_uid: str):
    instance = _instance_or_404(sop_uid)
    try:
        frame = int(request.GET.get("frame", 1))
        size = int(request.GET.get("size", 512))
    except ValueError:
        return HttpResponse("frame and size must be whole numbers", status=400, content_type="text/plain")
    trail.record_read(actor_of(request), instance.series.study, "image preview")
    try:
        png = services.instance_preview_png(instance, frame, size)
    except NoPixelData:
        raise Http404("this instance has no image")
    except IndexError as exc:
        return HttpResponse(str(exc), status=400, content_type="text/plain")
    except Exception as exc:
        log.warning("cannot render %s frame %s: %s", sop_uid, frame, exc)
        return HttpResponse("this image cannot be displayed", status=422, content_type="text/plain")
    response = HttpResponse(png, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@role_required("viewer")
def instance_download(request, sop_uid: str):
    instance = _instance_or_404(sop_uid)
    trail.record_transfer(actor_of(request), [instance], "R", "download")
    response = FileResponse(services.instance_path(instance).open("rb"), content_type="application/dicom")
    response["Content-Disposition"] = f'attachment; filename="{instance.sop_instance_uid}.dcm"'
    return response


@role_required("admin")
@require_http_methods(["GET", "POST"])
def upload(request):
    if request.method == "GET":
        return render(request, "archive/upload.html")
    files = request.FILES.getlist("files")
    if not files:
        messages.error(request, "Choose one or more DICOM files to upload.")
        return redirect("archive:upload")
    results, refused = [], False
    sender = services.admin_sender("web", request.user.username, request.META.get("REMOTE_ADDR", ""))
    for upload_file in files:
        if upload_file.size > large_body_limit():
            results.append((upload_file.name, False, f"not stored: {upload_file.size} bytes is over the "
                                                     f"SONOLOOP_MAX_INSTANCE_MB limit", ""))
            continue
        results.append((upload_file.name, *_store_upload(upload_file.read(), sender)))
        refused |= results[-1][2].startswith("refused")
    stored = any(ok for _, ok, _, _ in results)
    received = Instance.objects.filter(sop_instance_uid__in=[uid for _, ok, _, uid in results if ok])
    trail.record_transfer(actor_of(request), received.select_related("series__study__patient"), "C", "upload")
    status = 200 if stored else 409 if refused else 400
    return render(request, "archive/upload.html", {"results": results}, status=status)


def _store_upload(raw: bytes, sender) -> tuple[bool, str, str]:
    try:
        result = services.instance_store(raw, sender=sender)
    except services.StoreRefused as exc:
        return False, f"refused: {exc}", ""
    except InvalidInstance as exc:
        return False, f"not stored: {exc}", ""
    except services.StorageFull as exc:
        return False, f"not stored: {exc.strerror or 'the disk is full'}; tell the administrator", ""
    uid = result.instance.sop_instance_uid
    return True, "replaced the earlier copy" if result.replaced else "kept the earlier copy" if result.kept_existing else "stored", uid


@api_login_required
def api_instance(request, sop_uid: str):
    instance = Instance.objects.select_related("series__study__patient").filter(sop_instance_uid=sop_uid).first()
    if instance is None:
        return JsonResponse({"error": f"no instance with SOP Instance UID {sop_uid}"}, status=404)
    summary = services.instance_summary(instance, request.build_absolute_uri("/"))
    summary["attributes"] = [{"name": name, "value": value} for name, value in services.instance_attributes(instance)]
    summary.update(instance_api_sections(request, instance))
    return JsonResponse(summary)


@api_login_required
def api_studies(request):
    try:
        limit = min(int(request.GET.get("limit", 50)), 500)
        offset = max(int(request.GET.get("offset", 0)), 0)
    except ValueError:
        return JsonResponse({"error": "limit and offset must be whole numbers"}, status=400)
    studies = services.present_only(Study.objects.select_related("patient"), "STUDY").order_by(
        "-study_date", "-id")[offset: offset + limit]
    return JsonResponse(
        {"studies": [services.study_summary(s) for s in studies], "limit": limit, "offset": offset}
    )


# -- error pages: messages for people, never tracebacks ------------------------------------------


def _error(request, status: int, title: str, message: str):
    if request.path.startswith(("/api/", "/dicomweb/")):
        return JsonResponse({"error": message}, status=status)
    return render(request, "error.html", {"title": title, "message": message}, status=status)


def bad_request(request, exception=None):
    return _error(request, 400, "Bad request", "The request could not be understood.")


def permission_denied(request, exception=None):
    return _error(request, 403, "Not allowed", "You do not have permission to see this page.")


def page_not_found(request, exception=None):
    return _error(request, 404, "Not found", "There is nothing at this address. It may have been deleted.")


def server_error(request):
    return _error(
        request, 500, "Something went wrong",
        "Sonoloop hit an unexpected error. It has been logged; please tell your administrator the time it happened.",
    )


def home(request):
    return redirect(reverse("archive:studies"))
