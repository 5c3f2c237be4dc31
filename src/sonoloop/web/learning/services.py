"""The learning loop: retraining runs from approved annotations mixed with the original data,
their candidates registered in the model registry, and the AI-vs-expert agreement per version.

The registry's own services (registering, promotion, rollback) are gathered here for the
pages and commands that show both."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sonoloop.ml.data import DataError, select
from sonoloop.ml.modelfolder import ModelFolderError
from sonoloop.web import jobs
from sonoloop.web.accounts.roles import has_role
from sonoloop.web.registry.evaluation import heldout_frames, original_frames, version_evaluate  # noqa: F401
from sonoloop.web.registry.models import ModelDecision, ModelVersion  # noqa: F401
from sonoloop.web.registry.services import (  # noqa: F401  (the registry's side of the pages and commands)
    Conflict, NotAllowed, RegistryError, decision_summary, model_promote, model_rollback, registry_ensure,
    shown_folder, version_get, version_register,
)

from .models import RetrainingJob

log = logging.getLogger("sonoloop.learning")
TUNING_PATIENTS = 3  # original training patients held back to choose the best epoch of a retraining run
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LearningError(RegistryError):
    """A retraining request that cannot be carried out; the message says why (HTTP 400, CLI exit 2)."""


class Cancelled(Exception):
    """A retraining run stopped at a person's request."""


# -- data --------------------------------------------------------------------------------------


def training_pool() -> tuple[list, list]:
    """(originals to mix in, tuning frames): CAMUS training patients; the last few choose the best epoch."""
    frames = select(original_frames(), "training")
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


# -- evaluation ------------------------------------------------------------------------------


def annotated_dice_store(sender, version: ModelVersion, segmenter, **kwargs) -> None:
    """After a version's held-out evaluation: its Dice on the approved annotations too."""
    from sonoloop.ml.evaluate import mean_dice
    from sonoloop.web.annotations.services import approved_annotations

    annotated, _ = annotated_frames(approved_annotations())
    ModelVersion.objects.filter(pk=version.pk).update(
        annotated_dice=mean_dice(segmenter, annotated) if annotated else {})


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

            def enqueue():
                task_id = str(retrain_task.enqueue(job.pk).id)
                RetrainingJob.objects.filter(pk=job.pk).update(task_id=task_id)  # the row names its task

            transaction.on_commit(enqueue)
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
    except (RegistryError, RetrainError, ModelFolderError, DataError, OSError) as exc:
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


def published_dice(folder: str) -> dict | None:
    """The Dice the version was published with, from its model.json (``metrics``): what the
    pages show when no held-out set is configured here. None when it states none."""
    try:
        metrics = json.loads((Path(folder) / "model.json").read_text()).get("metrics") or {}
    except (OSError, ValueError):
        return None
    for name, values in metrics.items():
        if "dice" in name.lower() and isinstance(values, dict) and values:
            return {"source": name, "dice": values}
    return None


def version_summary(version: ModelVersion, trend: dict | None = None) -> dict:
    trend = agreement_trend() if trend is None else trend
    return {
        "name": version.name,
        "parent": version.parent.name if version.parent_id else None,
        "origin": version.origin,
        "active": version.is_active,
        "created_at": version.created_at.isoformat(),
        "heldout_dice": version.heldout_dice,
        "published_dice": None if version.heldout_dice else published_dice(version.folder),
        "annotated_dice": version.annotated_dice,
        "annotation_agreement": trend.get(version.name),
        "evaluated_at": version.evaluated_at.isoformat() if version.evaluated_at else None,
        "folder": shown_folder(version.folder),
    }
