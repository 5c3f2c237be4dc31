"""The model registry's JSON API. Thin: parse, check, call a service, map errors."""

from __future__ import annotations

import json

from django.http import JsonResponse
from django.views.decorators.http import require_http_methods

from sonoloop.web.accounts.auth import api_login_required
from sonoloop.web.errors import json_errors
from sonoloop.web.registry.models import ModelDecision, ModelVersion

from . import services
from .models import RetrainingJob


def _body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise services.LearningError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise services.LearningError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise services.LearningError("the body must be a JSON object")
    return body


@api_login_required
@require_http_methods(["GET"])
def api_models(request):
    services.registry_ensure()
    trend = services.agreement_trend()
    return JsonResponse({
        "versions": [services.version_summary(v, trend) for v in ModelVersion.objects.select_related("parent")],
        "decisions": [services.decision_summary(d) for d in
                      ModelDecision.objects.select_related("version", "previous", "user")[:100]],
    })


def _decide(request, name: str, action):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    body = _body(request)
    decision = action(services.version_get(name), request.user, body)
    return JsonResponse(services.decision_summary(decision))


@api_login_required
@json_errors
def api_model_promote(request, name: str):
    return _decide(request, name, lambda v, user, body: services.model_promote(
        v, user, force=bool(body.get("force", False)), reason=str(body.get("reason", ""))[:2000]))


@api_login_required
@json_errors
def api_model_rollback(request, name: str):
    return _decide(request, name, lambda v, user, body: services.model_rollback(
        v, user, reason=str(body.get("reason", ""))[:2000]))


def job_summary(job: RetrainingJob) -> dict:
    return {"id": job.pk, "name": job.name, "parent": job.parent.name, "strategy": job.strategy, "ratio": job.ratio,
            "hyperparameters": job.hyperparameters, "status": job.status, "reason": job.reason,
            "progress": job.progress, "result": job.result.name if job.result_id else None,
            "task": job.task_id or None, "created_at": job.created_at.isoformat(),
            "finished_at": job.finished_at.isoformat() if job.finished_at else None}


@api_login_required
@json_errors
def api_retraining(request):
    if request.method == "GET":
        jobs = RetrainingJob.objects.select_related("parent", "result")[:100]
        return JsonResponse({"jobs": [job_summary(j) for j in jobs]})
    if request.method != "POST":
        return JsonResponse({"error": "use GET or POST"}, status=405)

    body = _body(request)
    try:
        options = {"parent": str(body["parent"]), "name": str(body["name"]), "strategy": str(body["strategy"]),
                   "ratio": None if body.get("ratio") is None else float(body["ratio"]),
                   "epochs": int(body.get("epochs", 10)), "batch_size": int(body.get("batch_size", 4)),
                   "learning_rate": float(body.get("learning_rate", 1e-4)),
                   "augment": bool(body.get("augment", True))}
    except KeyError as exc:
        raise services.LearningError(f"{exc.args[0]} is required") from None
    except (TypeError, ValueError):
        raise services.LearningError("ratio, epochs, batch_size and learning_rate must be numbers") from None
    return JsonResponse(job_summary(services.retrain_create(request.user, **options)), status=201)


@api_login_required
def api_retraining_job(request, pk: int):
    job = RetrainingJob.objects.select_related("parent", "result").filter(pk=pk).first()
    if job is None:
        return JsonResponse({"error": f"there is no retraining run {pk}"}, status=404)
    return JsonResponse(job_summary(job))


@api_login_required
@json_errors
def api_retraining_cancel(request, pk: int):
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    job = RetrainingJob.objects.select_related("parent", "result").filter(pk=pk).first()
    if job is None:
        return JsonResponse({"error": f"there is no retraining run {pk}"}, status=404)
    return JsonResponse(job_summary(services.retrain_cancel(job, request.user)))
