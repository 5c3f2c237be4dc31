"""Analysis pages and JSON API. Thin: look up, call a service, render."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.accounts.roles import role_required
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.panels import Panel
from sonoloop.web.errors import json_errors

from . import services
from .models import AnalysisJob, AnalysisResult
from .plots import area_plot_svg


def instance_panel(request, instance: Instance) -> Panel | None:
    """The instance page's "Automatic analysis" section."""
    jobs = list(instance.analysis_jobs.select_related("result")[:20])
    if not jobs:
        return None
    results = list(instance.analysis_results.all()[:10])
    latest = results[0] if results else None
    plot = ""
    if latest and latest.measurements.get("areas", {}).get("LV"):
        m = latest.measurements
        plot = mark_safe(area_plot_svg(m["areas"]["LV"], [b["ed"] for b in m.get("beats", [])],
                                       [b["es"] for b in m.get("beats", [])], m["units"]["area"]))
    active = any(j.status in (AnalysisJob.QUEUED, AnalysisJob.RUNNING) for j in jobs)
    seg = Instance.objects.filter(sop_instance_uid=latest.seg_sop_instance_uid).first() if latest else None
    # the page reloads itself until the first result is there; later runs would interrupt the loop
    # playing above, so the panel says one is running instead
    return Panel("analysis/_instance_panel.html",
                 {"jobs": jobs, "results": results, "latest": latest, "plot": plot, "seg": seg,
                  "rerunning": active and latest is not None},
                 refresh_seconds=3 if active and latest is None else None)


def study_panel(request, study) -> Panel | None:
    """The study page's biplane measurements, when the study has both apical views analysed."""
    latest = study.measurements.select_related("four_chamber__instance", "two_chamber__instance").first()
    if latest is None:
        return None
    return Panel("analysis/_study_panel.html", {"latest": latest, "v": latest.values})


@role_required("viewer")
def job_list(request):
    jobs = AnalysisJob.objects.select_related("instance", "result").order_by("-created_at", "-id")
    status = request.GET.get("status", "")
    if status in dict(AnalysisJob.STATUSES):
        jobs = jobs.filter(status=status)
    page = Paginator(jobs, 50).get_page(request.GET.get("page"))
    counts = {s: AnalysisJob.objects.filter(status=s).count() for s, _ in AnalysisJob.STATUSES}
    return render(request, "analysis/job_list.html", {"page": page, "status": status, "counts": counts,
                                                      "querystring": f"status={status}" if status else ""})


@role_required("admin")
@require_POST
def job_retry(request, pk: int):
    job = get_object_or_404(AnalysisJob.objects.select_related("instance"), pk=pk)
    try:
        new = services.job_retry(job)
    except services.RetryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Job {new.pk} queued (a new run of job {job.pk}).")
    return redirect("archive:instance", job.instance.sop_instance_uid)


# -- JSON API --------------------------------------------------------------------------------


def instance_api_section(request, instance: Instance) -> dict:
    """What GET /api/instances/<uid> says about the automatic analysis."""
    results = [services.result_summary(r) for r in instance.analysis_results.all()]
    return {
        "jobs": [services.job_summary(j) for j in instance.analysis_jobs.select_related("instance", "result")],
        "results": results,
        "measurements": results[0]["measurements"] if results else None,
        "ejection_fraction": results[0]["ejection_fraction"] if results else None,
    }


@api_login_required
def api_instance_analysis(request, sop_uid: str):
    instance = Instance.objects.filter(sop_instance_uid=sop_uid).first()
    if instance is None:
        return JsonResponse({"error": f"no instance with SOP Instance UID {sop_uid}"}, status=404)
    jobs = instance.analysis_jobs.select_related("instance", "result")
    results = instance.analysis_results.all()
    return JsonResponse({"instance": sop_uid, "jobs": [services.job_summary(j) for j in jobs],
                         "results": [services.result_summary(r) for r in results]})


@api_login_required
def api_jobs(request):
    jobs = AnalysisJob.objects.select_related("instance", "result")
    status = request.GET.get("status")
    if status:
        if status not in dict(AnalysisJob.STATUSES):
            return JsonResponse({"error": f"status must be one of {', '.join(dict(AnalysisJob.STATUSES))}"},
                                status=400)
        jobs = jobs.filter(status=status)
    try:
        limit = min(int(request.GET.get("limit", 50)), 500)
    except ValueError:
        return JsonResponse({"error": "limit must be a whole number"}, status=400)
    return JsonResponse({"jobs": [services.job_summary(j) for j in jobs[:limit]]})


@api_login_required
def api_job(request, pk: int):
    job = AnalysisJob.objects.select_related("instance", "result").filter(pk=pk).first()
    if job is None:
        return JsonResponse({"error": f"there is no job {pk}"}, status=404)
    if request.method == "POST":
        return JsonResponse({"error": "POST to /api/jobs/<id>/retry to run a job again"}, status=405)
    summary = services.job_summary(job)
    result = AnalysisResult.objects.filter(job=job).first()
    summary["result"] = services.result_summary(result) if result else None
    return JsonResponse(summary)


@api_login_required(role="admin")
@json_errors
def api_job_retry(request, pk: int):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    job = AnalysisJob.objects.select_related("instance").filter(pk=pk).first()
    if job is None:
        return JsonResponse({"error": f"there is no job {pk}"}, status=404)
    return JsonResponse(services.job_summary(services.job_retry(job)), status=201)


@api_login_required
def api_study_measurements(request, study_uid: str):
    from sonoloop.web.archive.models import Study

    study = Study.objects.filter(study_instance_uid=study_uid).first()
    if study is None:
        return JsonResponse({"error": f"no study with Study Instance UID {study_uid}"}, status=404)
    rows = study.measurements.select_related("four_chamber__instance", "two_chamber__instance")
    return JsonResponse({"study": study_uid, "measurements": [{
        "method": m.method, "values": m.values, "created_at": m.created_at.isoformat(),
        "four_chamber": {"instance": m.four_chamber.instance.sop_instance_uid, "result_version": m.four_chamber.version},
        "two_chamber": {"instance": m.two_chamber.instance.sop_instance_uid, "result_version": m.two_chamber.version},
    } for m in rows]})
