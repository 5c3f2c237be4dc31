"""Registering versions, the active version, promotion through the held-out gate, rollback."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from sonoloop.ml.modelfolder import ModelFolderError, read_description
from sonoloop.web import errors
from sonoloop.web.accounts.roles import has_role

from .models import ModelDecision, ModelVersion

log = logging.getLogger("sonoloop.registry")


class RegistryError(errors.BadRequest):
    """A request the registry cannot carry out; the message says why (HTTP 400/409, CLI exit 2)."""


class Conflict(RegistryError, errors.Conflict):
    """Not possible in the registry's present state (HTTP 409)."""

    http_status = errors.Conflict.http_status


class NotAllowed(errors.NotAllowed):
    """The user's role does not allow it (HTTP 403)."""


def version_register(folder: Path, *, origin: str, parent: ModelVersion | None = None, user=None,
                     active: bool = False) -> ModelVersion:
    try:
        description = read_description(folder)
    except ModelFolderError as exc:
        raise RegistryError(str(exc)) from None
    name = str(description.get("name") or Path(folder).name)
    with transaction.atomic():
        if ModelVersion.objects.filter(name=name).exists():
            raise Conflict(f"a model version named {name!r} is already registered")
        previous = ModelVersion.objects.filter(is_active=True).first()
        if active and previous:
            ModelVersion.objects.filter(pk=previous.pk).update(is_active=False)
        version = ModelVersion.objects.create(name=name, folder=str(Path(folder).resolve()), parent=parent,
                                              origin=origin, created_by=user, is_active=active)
        ModelDecision.objects.create(version=version, previous=previous if active else None, user=user,
                                     action=ModelDecision.REGISTERED,
                                     reason="registered and made active" if active else "registered as a candidate")
        evaluation_queue(version)
    return version


def evaluation_queue(version: ModelVersion) -> bool:
    """Queue the held-out evaluation of ``version`` (a task, never in a request); False when no
    held-out set is configured (SONOLOOP_CAMUS_DIR)."""
    if not settings.CONFIG.camus_dir:
        return False
    from .tasks import evaluate_task

    transaction.on_commit(lambda: evaluate_task.enqueue(version.pk))
    return True


def registry_ensure() -> ModelVersion:
    """The active version; on first use the configured model (SONOLOOP_MODEL) is registered as it."""
    active = ModelVersion.objects.filter(is_active=True).first()
    if active is not None:
        return active
    from sonoloop.ml.modelfolder import resolve_model

    folder = resolve_model(settings.CONFIG.model).resolve()
    existing = ModelVersion.objects.filter(folder=str(folder)).first()
    if existing is not None:
        ModelVersion.objects.filter(pk=existing.pk).update(is_active=True)
        return ModelVersion.objects.get(pk=existing.pk)
    try:
        return version_register(folder, origin=ModelVersion.SHIPPED, active=True)
    except (IntegrityError, Conflict):  # another process registered it at the same moment
        return ModelVersion.objects.get(is_active=True)


def active_model_folder() -> Path:
    """The folder of the model that segments arriving echoes: the active version's; with an
    empty registry and SONOLOOP_MODEL no model folder, that setting's own path, so that the
    worker fails the job with the loader's message."""
    try:
        return Path(registry_ensure().folder).resolve()
    except (ModelFolderError, RegistryError):
        from sonoloop.ml.modelfolder import resolve_model

        return resolve_model(settings.CONFIG.model).resolve()


def version_get(name: str) -> ModelVersion:
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        raise RegistryError(f"there is no model version {name!r} (see `sonoloop manage models list`)")
    if not (Path(version.folder) / "model.json").exists():
        raise RegistryError(f"model version {name!r} is registered but its folder {version.folder} is missing")
    return version


def gate(candidate: dict, active: dict, margin: float) -> list[str]:
    """Structures whose held-out Dice drops by more than ``margin``; empty means it may be promoted."""
    return [f"{name}: {candidate.get(name, 0):.4f} against {score:.4f}" for name, score in active.items()
            if candidate.get(name, 0) < score - margin]


def _activate(version: ModelVersion) -> None:
    with transaction.atomic():
        ModelVersion.objects.filter(is_active=True).update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)


def _require_evaluated(*versions: ModelVersion) -> None:
    for v in versions:
        v.refresh_from_db()
        if v.evaluated_at is None:  # the model never runs inside a request
            queued = ("its evaluation was queued when it was registered; the Models page shows the numbers when "
                      "it is done" if settings.CONFIG.camus_dir else "no held-out set is configured "
                      "(SONOLOOP_CAMUS_DIR)")
            raise Conflict(f"{v.name} has not been evaluated on the held-out set yet: {queued} "
                           f"(or run `sonoloop manage models evaluate {v.name}`)")


def model_promote(version: ModelVersion, user, force: bool = False, reason: str = "") -> ModelDecision:
    """Make ``version`` active if it passes the gate (or ``force``, recorded); record the decision."""
    if not has_role(user, "admin"):
        raise NotAllowed("only an admin promotes a model version")
    active = registry_ensure()
    if version.pk == active.pk:
        raise Conflict(f"{version.name} is already the active version")
    _require_evaluated(version, active)
    margin = settings.CONFIG.promotion_margin
    drops = gate(version.heldout_dice, active.heldout_dice, margin)
    numbers = {"candidate": version.heldout_dice, "active": active.heldout_dice, "active_version": active.name,
               "drops": drops}
    if drops and not force:
        return ModelDecision.objects.create(version=version, previous=active, action=ModelDecision.REJECTED,
                                            user=user, margin=margin, numbers=numbers,
                                            reason="held-out Dice dropped by more than the margin: " + "; ".join(drops))
    _activate(version)
    action = ModelDecision.FORCED if drops else ModelDecision.PROMOTED
    log.warning("model %s %s by %s (was %s)", version.name, action, user, active.name)
    return ModelDecision.objects.create(version=version, previous=active, action=action, user=user, margin=margin,
                                        numbers=numbers, reason=reason or ("forced past the gate: " + "; ".join(drops)
                                                                           if drops else "passed the gate"))


def model_rollback(version: ModelVersion, user, reason: str = "") -> ModelDecision:
    """Make an earlier version active again, without the gate; recorded."""
    if not has_role(user, "admin"):
        raise NotAllowed("only an admin rolls back the model")
    active = registry_ensure()
    if version.pk == active.pk:
        raise Conflict(f"{version.name} is already the active version")
    version = version_get(version.name)
    _activate(version)
    return ModelDecision.objects.create(version=version, previous=active, action=ModelDecision.ROLLED_BACK,
                                        user=user, numbers={"active_version": active.name},
                                        reason=reason or f"rolled back from {active.name}")


def shown_folder(folder: str) -> str:
    """A version's folder as pages and the API show it: relative to the data folder, or just
    its name — server paths are not for every viewer (security review #26)."""
    path = Path(folder)
    try:
        return str(path.relative_to(settings.CONFIG.data_dir))
    except ValueError:
        return path.name


def decision_summary(decision: ModelDecision) -> dict:
    return {"version": decision.version.name, "action": decision.action, "at": decision.at.isoformat(),
            "user": decision.user.get_username() if decision.user_id else None,
            "previous": decision.previous.name if decision.previous_id else None, "margin": decision.margin,
            "numbers": decision.numbers, "reason": decision.reason}
