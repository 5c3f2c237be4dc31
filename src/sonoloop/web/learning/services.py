"""The learning loop: register versions, retrain from approved annotations, evaluate on the
locked held-out set, promote through the gate, roll back."""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from sonoloop.ml.data import DataError, camus_frames, select
from sonoloop.ml.modelfolder import ModelFolderError, read_description
from sonoloop.web import errors, jobs
from sonoloop.web.errors import BadRequest
from sonoloop.web.accounts.roles import has_role

from .models import ModelDecision, ModelVersion, RetrainingJob

log = logging.getLogger("sonoloop.learning")
TUNING_PATIENTS = 3  # original training patients held back to choose the best epoch of a retraining run
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LearningError(BadRequest):
    """A request the registry cannot carry out; the message says why (HTTP 400/409, CLI exit 2)."""


class Conflict(LearningError, errors.Conflict):
    """Not possible in the registry's present state (HTTP 409)."""

    http_status = errors.Conflict.http_status


class NotAllowed(errors.NotAllowed):
    """The user's role does not allow it (HTTP 403)."""


class Cancelled(Exception):
    """A retraining run stopped at a person's request."""


# -- the registry ----------------------------------------------------------------------------


def version_register(folder: Path, *, origin: str, parent: ModelVersion | None = None, user=None,
                     active: bool = False) -> ModelVersion:
    try:
        description = read_description(folder)
    except ModelFolderError as exc:
        raise LearningError(str(exc)) from None
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


def active_model_folder() -> Path | None:
    """For the analysis worker: the active version's folder (what segments arriving echoes).

    None when nothing is registered and SONOLOOP_MODEL is no model folder: the worker then
    fails the job with the loader's own message."""
    try:
        return Path(registry_ensure().folder)
    except (ModelFolderError, LearningError):
        return None


def version_get(name: str) -> ModelVersion:
    version = ModelVersion.objects.filter(name=name).first()
    if version is None:
        raise LearningError(f"there is no model version {name!r} (see `sonoloop manage models list`)")
    if not (Path(version.folder) / "model.json").exists():
        raise LearningError(f"model version {name!r} is registered but its folder {version.folder} is missing")
    return version


# -- data --------------------------------------------------------------------------------------


def _camus() -> list:
    root = settings.CONFIG.camus_dir
    if not root:
        raise LearningError("set SONOLOOP_CAMUS_DIR to the original training data (CAMUS frames or release): "
                            "retraining mixes them in and the held-out set comes from them")
    try:
        return camus_frames(Path(root))
    except DataError as exc:
        raise LearningError(f"SONOLOOP_CAMUS_DIR: {exc}") from None


def heldout_frames() -> list:
    """The locked held-out set: CAMUS validation patients, never trained on by retraining runs."""
    return select(_camus(), "validation")


def training_pool() -> tuple[list, list]:
    """(originals to mix in, tuning frames): CAMUS training patients; the last few choose the best epoch."""
    frames = select(_camus(), "training")
    tuning_patients = sorted({f.patient for f in frames})[-TUNING_PATIENTS:]
    return ([f for f in frames if f.patient not in tuning_patients],
            [f for f in frames if f.patient in tuning_patients])


def annotated_frames(annotations) -> tuple[list, list[dict]]:
    """Every covered frame of the given annotations as training frames, and their provenance."""
    from sonoloop.dicom.pixels import all_frames
    from sonoloop.ml.metrics import remap
    from sonoloop.ml.preprocess import region_box
    from sonoloop.ml.retrain import AnnotatedFrame
    from sonoloop.ml.spec import CLASSES
    from sonoloop.web.annotations.document import CLASS_MAP
    from sonoloop.web.annotations.services import annotation_masks
    from sonoloop.web.archive.services import instance_path

    frames, provenance = [], []
    for annotation in annotations:
        instance = annotation.instance
        try:
            pixels, header, bits = all_frames(instance_path(instance), luma=True)
        except FileNotFoundError:
            raise LearningError(f"annotation {annotation.pk} (v{annotation.version}): the image "
                                f"{instance.sop_instance_uid} is no longer in the archive") from None
        numbers, masks = annotation_masks(annotation)
        masks = remap(masks, CLASS_MAP, CLASSES)  # the training class map, by structure name
        box = region_box(header.get("SequenceOfUltrasoundRegions"), pixels.shape[1], pixels.shape[2])
        patient = instance.series.study.patient
        for number, mask in zip(numbers, masks):
            frames.append(AnnotatedFrame(f"{instance.sop_instance_uid}#{number}@v{annotation.version}",
                                         f"archive-patient-{patient.pk}", pixels[number - 1], mask, box, bits))
        provenance.append({"annotation": annotation.pk, "version": annotation.version,
                           "instance": instance.sop_instance_uid, "frames": numbers,
                           "author": annotation.author.get_username(), "status": annotation.status})
    return frames, provenance


# -- evaluation and promotion ----------------------------------------------------------------


def version_evaluate(version: ModelVersion) -> ModelVersion:
    """Held-out Dice (and Dice on the approved annotations), stored with the version."""
    from sonoloop.ml.evaluate import mean_dice
    from sonoloop.ml.infer import Segmenter
    from sonoloop.web.annotations.services import approved_annotations

    segmenter = Segmenter(Path(version.folder), engine="fp32")
    heldout = mean_dice(segmenter, heldout_frames())
    annotated, _ = annotated_frames(approved_annotations())
    scores = {"heldout_dice": heldout, "annotated_dice": mean_dice(segmenter, annotated) if annotated else {}}
    ModelVersion.objects.filter(pk=version.pk).update(**scores, evaluated_at=timezone.now())
    version.refresh_from_db()
    return version


def gate(candidate: dict, active: dict, margin: float) -> list[str]:
    """Structures whose held-out Dice drops by more than ``margin``; empty means it may be promoted."""
    return [f"{name}: {candidate.get(name, 0):.4f} against {score:.4f}" for name, score in active.items()
            if candidate.get(name, 0) < score - margin]


def _activate(version: ModelVersion) -> None:
    with transaction.atomic():
        ModelVersion.objects.filter(is_active=True).update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)


def model_promote(version: ModelVersion, user, force: bool = False, reason: str = "") -> ModelDecision:
    """Make ``version`` active if it passes the gate (or ``force``, recorded); record the decision."""
    if not has_role(user, "admin"):
        raise NotAllowed("only an admin promotes a model version")
    active = registry_ensure()
    if version.pk == active.pk:
        raise Conflict(f"{version.name} is already the active version")
    for v in (version, active):
        v.refresh_from_db()
        if v.evaluated_at is None:  # the model never runs inside a request
            queued = ("its evaluation was queued when it was registered; the Models page shows the numbers when "
                      "it is done" if settings.CONFIG.camus_dir else "no held-out set is configured "
                      "(SONOLOOP_CAMUS_DIR)")
            raise Conflict(f"{v.name} has not been evaluated on the held-out set yet: {queued} "
                           f"(or run `sonoloop manage models evaluate {v.name}`)")
    margin = settings.CONFIG.promotion_margin
    drops = gate(version.heldout_dice, active.heldout_dice, margin)
    numbers = {"candidate": version.heldout_dice, "active": active.heldout_dice, "active_version": active.name,
               "drops": drops}
    if drops and not force:
        decision = ModelDecision.objects.create(version=version, previous=active, action=ModelDecision.REJECTED,
                                                user=user, margin=margin, numbers=numbers,
                                                reason="held-out Dice dropped by more than the margin: " + "; ".join(drops))
        return decision
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


def agreement_trend() -> dict[str, dict]:
    """Per model name: how many annotations were made against its results, and their mean AI-vs-expert Dice."""
    from sonoloop.web.annotations.models import Annotation

    trend = {}
    rows = Annotation.objects.exclude(model_name="").values("model_name", "agreement")
    for row in rows:
        entry = trend.setdefault(row["model_name"], {"annotations": 0, "dice": []})
        entry["annotations"] += 1
        if row["agreement"].get("mean_dice") is not None:
            entry["dice"].append(row["agreement"]["mean_dice"])
    return {name: {"annotations": e["annotations"],
                   "mean_dice": round(sum(e["dice"]) / len(e["dice"]), 4) if e["dice"] else None}
            for name, e in trend.items()}


# -- retraining -------------------------------------------------------------------------------


def retrain_create(user, *, parent: str, name: str, strategy: str, ratio: float | None = None,
                   epochs: int = 10, batch_size: int = 4, learning_rate: float = 1e-4, augment: bool = True,
                   enqueue: bool = True) -> RetrainingJob:
    from sonoloop.ml.retrain import RetrainError, ratio_for

    if not has_role(user, "admin"):
        raise NotAllowed("only an admin starts a retraining run")
    parent_version = version_get(parent)
    if not NAME_RE.fullmatch(name):  # "$" would let a trailing newline through
        raise LearningError("the new version's name: letters, digits, '.', '_' or '-', at most 64 characters")
    if ModelVersion.objects.filter(name=name).exists() or RetrainingJob.objects.filter(
            name=name, status__in=(RetrainingJob.QUEUED, RetrainingJob.RUNNING)).exists():
        raise Conflict(f"the name {name!r} is taken")
    try:
        ratio_for(strategy, ratio)
    except RetrainError as exc:
        raise LearningError(str(exc)) from None
    if not (1 <= epochs <= 1000 and 1 <= batch_size <= 256 and 0 < learning_rate < 1):
        raise LearningError("epochs 1–1000, batch size 1–256, learning rate between 0 and 1")
    from sonoloop.web.annotations.services import approved_annotations

    if not approved_annotations().exists():
        raise LearningError("there are no approved annotations to learn from")
    with transaction.atomic():
        job = RetrainingJob.objects.create(
            parent=parent_version, name=name, strategy=strategy, ratio=ratio, created_by=user,
            hyperparameters={"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
                             "augment": augment})
        if enqueue:
            from .tasks import retrain_task

            transaction.on_commit(lambda: retrain_task.enqueue(job.pk))
    return job


def retrain_cancel(job: RetrainingJob, user) -> RetrainingJob:
    if not has_role(user, "admin"):
        raise NotAllowed("only an admin cancels a retraining run")
    if job.status == RetrainingJob.QUEUED:
        RetrainingJob.objects.filter(pk=job.pk, status=RetrainingJob.QUEUED).update(
            status=RetrainingJob.CANCELLED, finished_at=timezone.now(), reason="cancelled before it started")
    elif job.status == RetrainingJob.RUNNING:
        RetrainingJob.objects.filter(pk=job.pk).update(cancel_requested=True)
    else:
        raise Conflict(f"the run is {job.status}; only a queued or running run can be cancelled")
    job.refresh_from_db()
    return job


def retrain_run(job_id: int, progress_bar: bool = False) -> RetrainingJob:
    """Run a queued retraining job: train, write the version folder, register it as a candidate."""
    claimed = jobs.claim(RetrainingJob, job_id)
    job = RetrainingJob.objects.select_related("parent").get(pk=job_id)
    if not claimed:
        return job
    with jobs.heartbeat(RetrainingJob, job.pk):
        _retrain(job, progress_bar)
    job.refresh_from_db()
    return job


def _retrain(job: RetrainingJob, progress_bar: bool) -> None:
    from sonoloop.ml.retrain import RetrainError, retrain
    from sonoloop.ml.train import TrainConfig
    from sonoloop.web.annotations.services import approved_annotations

    out = settings.CONFIG.models_dir / job.name
    began = time.monotonic()
    history = []

    def on_epoch(report) -> None:
        history.append({"epoch": report.epoch, "loss": report.train_loss, "dice": report.val_dice})
        epochs = job.hyperparameters["epochs"]
        left = (time.monotonic() - began) / report.epoch * (epochs - report.epoch)
        RetrainingJob.objects.filter(pk=job.pk).update(progress={
            "epoch": report.epoch, "epochs": epochs, "loss": report.train_loss, "tuning_dice": report.val_dice,
            "seconds_left": round(left), "history": history})
        if RetrainingJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
            raise Cancelled()

    try:
        annotations = list(approved_annotations().select_related("instance__series__study__patient"))
        frames, provenance = annotated_frames(annotations)
        originals, tuning = training_pool()
        parameters = job.hyperparameters
        config = TrainConfig(epochs=parameters["epochs"], batch_size=parameters["batch_size"],
                             learning_rate=parameters["learning_rate"], augment=parameters["augment"])
        retrain(Path(job.parent.folder), frames, originals, tuning, strategy=job.strategy, ratio=job.ratio,
                config=config, work_dir=settings.CONFIG.tmp_dir / f"retrain-{job.pk}", out=out, name=job.name,
                annotation_versions=provenance, data_source=f"approved annotations + CAMUS ({settings.CONFIG.camus_dir})",
                on_epoch=on_epoch, progress=progress_bar)
        version = version_register(out, origin=ModelVersion.RETRAINED, parent=job.parent, user=job.created_by)
        RetrainingJob.objects.filter(pk=job.pk).update(result=version)
        version_evaluate(version)
        active = registry_ensure()
        if not active.heldout_dice:  # so that promoting, a page request, need not run the model
            version_evaluate(active)
        _finish(job, RetrainingJob.DONE, f"{version.name} registered as a candidate; promote it to use it")
    except Cancelled:
        _finish(job, RetrainingJob.CANCELLED, "cancelled during training; no version was written")
    except (LearningError, RetrainError, ModelFolderError, DataError, OSError) as exc:
        _finish(job, RetrainingJob.FAILED, str(exc))
    except Exception as exc:
        log.exception("retraining job %s failed", job.pk)
        _finish(job, RetrainingJob.FAILED, f"{type(exc).__name__}: {exc}")


def retraining_fail_stale(stale_seconds: int | None = None) -> list[int]:
    """Running retraining runs whose worker went silent (killed, machine lost): failed, their
    scratch folders removed. The version folder is only ever renamed into place when complete,
    so nothing half-written remains, and the active model never changed."""
    cutoff = jobs.stale_cutoff(stale_seconds)
    lost = list(jobs.lost(RetrainingJob, cutoff))
    for job in lost:
        changed = RetrainingJob.objects.filter(pk=job.pk, status=RetrainingJob.RUNNING,
                                               heartbeat_at__lt=cutoff).update(
            status=RetrainingJob.FAILED, finished_at=timezone.now(),
            reason=f"the worker {job.worker or ''} stopped responding (killed or lost); no version was written; "
                   "start the run again")
        if changed:
            shutil.rmtree(settings.CONFIG.tmp_dir / f"retrain-{job.pk}", ignore_errors=True)
            # save_model's staging folder is mkdtemp(".<name>-"): 8 random characters, never "-";
            # so run "a" never takes the staging folder of a live run "a-b"
            for staging in settings.CONFIG.models_dir.glob(f".{job.name}-{'?' * 8}"):
                shutil.rmtree(staging, ignore_errors=True)
            log.warning("retraining run %s lost its worker %s: failed", job.pk, job.worker)
    return [job.pk for job in lost]


def _finish(job: RetrainingJob, status: str, reason: str) -> None:
    RetrainingJob.objects.filter(pk=job.pk, status=RetrainingJob.RUNNING).update(
        status=status, reason=reason, finished_at=timezone.now())


def version_summary(version: ModelVersion, trend: dict | None = None) -> dict:
    trend = agreement_trend() if trend is None else trend
    return {
        "name": version.name,
        "parent": version.parent.name if version.parent_id else None,
        "origin": version.origin,
        "active": version.is_active,
        "created_at": version.created_at.isoformat(),
        "heldout_dice": version.heldout_dice,
        "annotated_dice": version.annotated_dice,
        "annotation_agreement": trend.get(version.name),
        "evaluated_at": version.evaluated_at.isoformat() if version.evaluated_at else None,
        "folder": shown_folder(version.folder),
    }


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
