"""HTML pages of the model registry: versions, decisions, retraining runs; admins act here."""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from sonoloop.ml.retrain import STRATEGIES
from sonoloop.web.accounts.roles import has_role, role_required

from sonoloop.web.registry.models import ModelDecision, ModelVersion

from . import services
from .models import RetrainingJob
from .plots import curves_svg


@role_required("viewer")
def model_list(request):
    services.registry_ensure()
    trend = services.agreement_trend()
    versions = [services.version_summary(v, trend) for v in ModelVersion.objects.select_related("parent")]
    jobs = RetrainingJob.objects.select_related("parent", "result")[:20]
    running = any(j.status in (RetrainingJob.QUEUED, RetrainingJob.RUNNING) for j in jobs)
    return render(request, "learning/model_list.html", {
        "versions": versions,
        "decisions": ModelDecision.objects.select_related("version", "previous", "user")[:30],
        "jobs": jobs,
        "is_admin": has_role(request.user, "admin"),
        "strategies": [*STRATEGIES, "ratio"],
        "refresh_seconds": 5 if running else None,
    })


@role_required("viewer")
def model_detail(request, name: str):
    version = get_object_or_404(ModelVersion.objects.select_related("parent"), name=name)
    try:
        description = json.loads((Path(version.folder) / "model.json").read_text())
    except (OSError, ValueError):
        description = {}
    training = description.get("training", {})
    return render(request, "learning/model_detail.html", {
        "version": version,
        "summary": services.version_summary(version),
        "training": training,
        "hyperparameters": training.get("hyperparameters", {}),
        "retraining": training.get("retraining"),
        "curves": mark_safe(curves_svg(training.get("history", []))),  # built from numbers only
        "decisions": version.decisions.select_related("previous", "user"),
        "is_admin": has_role(request.user, "admin"),
    })


def _act(request, function, success: str):
    try:
        result = function()
    except services.NotAllowed as exc:
        messages.error(request, str(exc))
    except services.RegistryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, success.format(result=result))
    return redirect("learning:models")


@role_required("admin")
@require_POST
def model_promote(request, name: str):
    def promote():
        decision = services.model_promote(services.version_get(name), request.user,
                                          force=request.POST.get("force") == "1")
        if decision.action == ModelDecision.REJECTED:
            raise services.LearningError(f"{name} was not promoted: {decision.reason}")
        return decision

    return _act(request, promote, "{result.version.name}: {result.action}.")


@role_required("admin")
@require_POST
def model_rollback(request, name: str):
    return _act(request, lambda: services.model_rollback(services.version_get(name), request.user),
                "{result.version.name} is active again.")


@role_required("admin")
@require_POST
def retrain_start(request):
    def start():
        post = request.POST
        try:
            ratio = float(post["ratio"]) if post.get("ratio") else None
            epochs, batch_size = int(post.get("epochs", 10)), int(post.get("batch_size", 4))
            learning_rate = float(post.get("learning_rate", 1e-4))
        except ValueError:
            raise services.LearningError("ratio, epochs, batch size and learning rate must be numbers") from None
        return services.retrain_create(request.user, parent=post.get("parent", ""), name=post.get("name", ""),
                                       strategy=post.get("strategy", ""), ratio=ratio, epochs=epochs,
                                       batch_size=batch_size, learning_rate=learning_rate,
                                       augment=post.get("augment") == "1")

    return _act(request, start, "Retraining run {result.pk} queued for a training worker.")


@role_required("admin")
@require_POST
def retrain_cancel(request, pk: int):
    job = get_object_or_404(RetrainingJob, pk=pk)
    return _act(request, lambda: services.retrain_cancel(job, request.user), "Run {result.pk}: {result.status}.")
