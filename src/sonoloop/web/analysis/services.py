"""Automatic analysis of arriving echoes: jobs, the run itself, retries, lost workers.

The archive signals every indexed instance inside its index transaction; this module
records a job for it (queued, or skipped with the reason) and enqueues the task in that
same transaction, so an acknowledged image is never left without its job. A worker runs
the job (``job_run``): every frame through the active model, the label maps kept, a DICOM
Segmentation and the measurements stored, a new result version recorded. A worker that
dies leaves its job ``running`` with a stale heartbeat; ``jobs_requeue_stale`` (run by
every ``sonoloop worker``) puts it back in the queue.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from datetime import timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from sonoloop.dicom.filestore import FileStore
from sonoloop.dicom.instance import sop_class_name
from sonoloop.web import jobs
from sonoloop.web.errors import Conflict
from sonoloop.web.archive.models import Instance

from .models import AnalysisJob, AnalysisResult, ResultForward, StudyMeasurement

log = logging.getLogger("sonoloop.analysis")

ULTRASOUND_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
MAX_ATTEMPTS = 3


class AnalysisError(Exception):
    """A job that cannot succeed as it stands; the message is for a person to act on."""


# -- jobs ------------------------------------------------------------------------------------


def skip_reason(instance: Instance) -> str | None:
    if instance.sop_class_uid not in ULTRASOUND_IMAGES:
        return f"not an echo image: {sop_class_name(instance.sop_class_uid)} is not segmented"
    if not instance.rows or not instance.columns:
        return "the instance has no image"
    return None


def on_instance_indexed(sender, instance: Instance, created: bool, derived: bool = False, **kwargs) -> None:
    """A job for every image that arrives; none for the SEG and SR Sonoloop writes itself."""
    if settings.CONFIG.auto_analysis and not derived:
        job_create(instance)


def on_instance_replacing(sender, instance: Instance, **kwargs) -> str | None:
    """AI results were computed on the stored pixels: another copy must not slip in under them."""
    if AnalysisResult.objects.filter(instance=instance).exists():
        return "has AI results"
    return None


def job_create(instance: Instance, retry_of: AnalysisJob | None = None) -> AnalysisJob:
    """A job for ``instance``: skipped (with the reason) or queued, its task enqueued in the
    caller's transaction."""
    reason = skip_reason(instance)
    if reason:
        return AnalysisJob.objects.create(instance=instance, status=AnalysisJob.SKIPPED, reason=reason,
                                          finished_at=timezone.now(), retry_of=retry_of)
    job = AnalysisJob.objects.create(instance=instance, status=AnalysisJob.QUEUED, retry_of=retry_of)
    _enqueue(job)
    return job


def _enqueue(job: AnalysisJob) -> None:
    from .tasks import analyse_instance

    analyse_instance.enqueue(job.pk)  # its task row is found by its argument (job_tasks)


def job_tasks(job_id: int):
    """The task rows that run ``job_id`` (one per attempt)."""
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(task_path="sonoloop.web.analysis.tasks.analyse_instance",
                                       args_kwargs={"args": [job_id], "kwargs": {}})


class RetryError(Conflict):
    pass


def job_retry(job: AnalysisJob) -> AnalysisJob:
    """Run the model on the job's instance again, as a new job (a new result version when it
    succeeds); the old job and its result stay as they are."""
    job.refresh_from_db()
    if job.status in (AnalysisJob.QUEUED, AnalysisJob.RUNNING):
        raise RetryError(f"job {job.pk} is {job.status}; wait for it to finish")
    if job.status == AnalysisJob.SKIPPED:
        raise RetryError(f"job {job.pk} was skipped ({job.reason}); running it again would skip it again")
    with transaction.atomic():
        return job_create(job.instance, retry_of=job)


def jobs_requeue_stale(stale_seconds: int | None = None) -> list[AnalysisJob]:
    """Running jobs whose worker has gone silent: back in the queue (a new attempt), or failed
    after MAX_ATTEMPTS lost workers. Returns the jobs changed."""
    now, cutoff = timezone.now(), jobs.stale_cutoff(stale_seconds)
    changed = []
    for job in jobs.lost(AnalysisJob, cutoff):
        with transaction.atomic():
            current = AnalysisJob.objects.select_for_update().get(pk=job.pk)
            if current.status != AnalysisJob.RUNNING or current.heartbeat_at >= cutoff:
                continue
            _abandon_tasks(current.pk, now)
            lost = f"worker {current.worker or '?'} stopped responding (last sign {current.heartbeat_at:%H:%M:%S} UTC)"
            if current.attempt >= MAX_ATTEMPTS:
                current.status = AnalysisJob.FAILED
                current.reason = (f"{lost}; its workers were lost {current.attempt} times on this instance — "
                                  "killed or out of memory? Retry once the cause is fixed.")
                current.finished_at = now
                current.save()
            else:
                current.status = AnalysisJob.QUEUED
                current.attempt += 1
                current.reason = f"re-queued: {lost}"
                current.frames_done = 0
                current.save()
                _enqueue(current)
            log.warning("job %s for %s: %s", current.pk, current.instance.sop_instance_uid, current.reason)
            changed.append(current)
    return changed


def _abandon_tasks(job_id: int, now) -> None:
    """The lost run's task row would say "running" for ever: mark it failed."""
    from django_tasks.base import TaskResultStatus

    job_tasks(job_id).filter(status=TaskResultStatus.RUNNING).update(
        status=TaskResultStatus.FAILED, finished_at=now,
        exception_class_path="sonoloop.web.analysis.WorkerLost", traceback="the worker stopped responding")


# -- running a job ---------------------------------------------------------------------------


@lru_cache(maxsize=1)
def results_store() -> FileStore:
    config = settings.CONFIG
    return FileStore(config.results_dir, config.tmp_dir, suffix=".npz")


class ActiveModel:
    """The model that segments arriving echoes, loaded once per worker process."""

    def __init__(self, folder: Path, engine: str):
        from sonoloop.ml.infer import Segmenter
        from sonoloop.ml.modelfolder import weights_digest

        self.folder = folder
        self.segmenter = Segmenter(folder, engine=engine)
        description = self.segmenter.description
        self.name = str(description.get("name") or folder.name)
        self.version = str(description.get("version") or weights_digest(folder, description))
        self.classes = list(description["classes"])


_model_lock = threading.Lock()
_model: ActiveModel | None = None


# Functions () -> Path | None that name the active model's folder; the first answer wins, and
# without one it is SONOLOOP_MODEL. The model registry (learning app) adds itself here.
MODEL_FOLDER_PROVIDERS: list = []


def active_model_folder() -> Path:
    from sonoloop.ml.modelfolder import resolve_model

    for provider in MODEL_FOLDER_PROVIDERS:
        folder = provider()
        if folder is not None:
            return Path(folder).resolve()
    return resolve_model(settings.CONFIG.model).resolve()


def active_model() -> ActiveModel:
    """The active version, reloaded when another version became active since the last job."""
    global _model
    config = settings.CONFIG
    folder = active_model_folder()
    with _model_lock:
        if _model is None or _model.folder != folder:
            _model = ActiveModel(folder, config.inference_engine)
        return _model


def job_run(job_id: int) -> str:
    """Run one queued job to the end (done or failed); returns its final status."""
    if not jobs.claim(AnalysisJob, job_id):
        # a duplicate delivery, or the job was re-queued under a newer task
        job = AnalysisJob.objects.filter(pk=job_id).first()
        return job.status if job else "missing"
    job = AnalysisJob.objects.select_related("instance").get(pk=job_id)
    with jobs.heartbeat(AnalysisJob, job.pk):
        try:
            _analyse(job)
        except AnalysisError as exc:
            _fail(job, str(exc))
        except Exception as exc:  # anything else is a bug or an environment problem: keep the job, say what
            log.exception("job %s failed", job.pk)
            _fail(job, f"unexpected error ({type(exc).__name__}: {exc}); see the worker log")
    return AnalysisJob.objects.get(pk=job.pk).status


def _fail(job: AnalysisJob, reason: str) -> None:
    AnalysisJob.objects.filter(pk=job.pk, status=AnalysisJob.RUNNING).update(
        status=AnalysisJob.FAILED, reason=reason, finished_at=timezone.now())
    log.warning("job %s for %s failed: %s", job.pk, job.instance.sop_instance_uid, reason)


def _analyse(job: AnalysisJob) -> None:

    from sonoloop.dicom.pixels import NoPixelData, all_frames
    from sonoloop.echo.analyse import DicomOutputs, analyse_loop
    from sonoloop.ml.engines import EngineError
    from sonoloop.ml.modelfolder import ModelFolderError
    from sonoloop.ml.preprocess import FrameError
    from sonoloop.web.archive.services import dataset_store, instance_path, own_device

    try:
        model = active_model()
    except (ModelFolderError, EngineError) as exc:
        raise AnalysisError(f"the model cannot be loaded: {exc}") from None
    AnalysisJob.objects.filter(pk=job.pk).update(model_name=model.name, model_version=model.version)
    instance = job.instance
    try:
        frames, header, bits = all_frames(instance_path(instance), luma=True)
    except NoPixelData as exc:
        raise AnalysisError(str(exc)) from None
    except FileNotFoundError:
        raise AnalysisError("the stored file is missing (see `sonoloop manage archive_check`)") from None
    except Exception as exc:  # the decoders raise many kinds on broken pixel data
        raise AnalysisError(f"the pixel data cannot be decoded: {exc}") from None
    AnalysisJob.objects.filter(pk=job.pk).update(frames_total=len(frames))

    last_update = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last_update[0] >= 1.0 or done == total:
            last_update[0] = time.monotonic()
            AnalysisJob.objects.filter(pk=job.pk).update(frames_done=done)

    version = (AnalysisResult.objects.filter(instance=instance).aggregate(v=Max("version"))["v"] or 0) + 1
    outputs = DicomOutputs(model.name, model.version,
                           own_device(),
                           seg_series_number=900 + version, sr_series_number=950 + version,
                           description=f"AI segmentation v{version} ({model.name})", device_uid=_device_uid(),
                           uid_seed=f"{_device_uid()} analysis job {job.pk}")
    try:
        analysis = analyse_loop(frames, header, bits, model.segmenter, outputs=outputs, on_progress=progress)
    except FrameError as exc:
        raise AnalysisError(f"a frame cannot be segmented: {exc}") from None
    del frames
    labels, measurements = analysis.labels, analysis.measurements

    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels)
    labels_key = results_store().put(buffer.getvalue())

    seg_uid = sr_uid = ""
    for dataset in (analysis.segmentation, analysis.report):
        if dataset is None:
            continue
        dataset_store(dataset)
        if dataset is analysis.segmentation:
            seg_uid = dataset.SOPInstanceUID
        else:
            sr_uid = dataset.SOPInstanceUID

    for attempt in range(3):  # two runs on one instance finishing together: the second takes the next number
        try:
            with transaction.atomic():
                version = (AnalysisResult.objects.filter(instance=instance).aggregate(v=Max("version"))["v"] or 0) + 1
                result = AnalysisResult.objects.create(
                    job=job, instance=instance, version=version, model_name=model.name,
                    model_version=model.version, labels_key=labels_key, classes=model.classes,
                    seg_sop_instance_uid=seg_uid, sr_sop_instance_uid=sr_uid, measurements=measurements)
                forwards_queue(result)
                if measurements.get("view") in ("A4C", "A2C"):
                    biplane_update(result)
                AnalysisJob.objects.filter(pk=job.pk).update(status=AnalysisJob.DONE, finished_at=timezone.now(),
                                                             frames_done=len(labels), heartbeat_at=timezone.now(),
                                                             reason="")
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _device_uid() -> str:
    """A stable UID for this Sonoloop installation as the observing device of its reports."""
    from sonoloop.web.archive.services import own_uid

    return own_uid()


def biplane_update(result: AnalysisResult) -> StudyMeasurement | None:
    """When the study has a result for the other apical view too, the biplane volumes from the
    latest result of each (different instances); None when it has not, or a value is missing."""
    from sonoloop.echo.measure import Calibration, biplane_volumes

    view = result.measurements.get("view")
    other_view = {"A4C": "A2C", "A2C": "A4C"}.get(view)
    study = result.instance.series.study
    other = (AnalysisResult.objects.filter(instance__series__study=study, measurements__view=other_view)
             .exclude(instance=result.instance).order_by("-created_at", "-id").first())
    if other is None:
        return None
    four, two = (result, other) if view == "A4C" else (other, result)
    unreliable = [name for name, r in (("apical 4-chamber", four), ("apical 2-chamber", two))
                  if not r.measurements.get("reliable", True)]
    if unreliable:  # biplane volumes from an unreliable beat would mislead as much as its EF
        return StudyMeasurement.objects.create(study=study, four_chamber=four, two_chamber=two, values={
            "flags": [f"no biplane volumes: the {' and '.join(unreliable)} loop's EF is unreliable"]})
    phases = []
    for r in (four, two):
        m = r.measurements
        if m.get("ed_frame") is None:
            return None
        labels = result_labels(r)
        phases.append(((labels[m["ed_frame"]], labels[m["es_frame"]]), Calibration(**m["calibration"])))
    try:
        values = biplane_volumes(phases[0][0], phases[1][0], four.classes, phases[0][1], phases[1][1])
    except ValueError as exc:
        values = {"flags": [f"no biplane volumes: {exc}"]}
    return StudyMeasurement.objects.create(study=study, four_chamber=four, two_chamber=two, values=values)


# -- sending results to peers ---------------------------------------------------------------

FORWARD_ATTEMPTS = 6
FORWARD_FIRST_DELAY = 10.0  # seconds; doubled after each failure (10, 20, 40, 80, 160)


def forwards_queue(result: AnalysisResult) -> list[ResultForward]:
    """The result's SEG and SR to every peer that receives results, each as its own task."""
    from sonoloop.web.archive.models import DicomPeer

    forwards = []
    for peer in DicomPeer.objects.filter(receives_results=True):
        for what, uid in (("SEG", result.seg_sop_instance_uid), ("SR", result.sr_sop_instance_uid)):
            if uid:
                forward = ResultForward.objects.create(result=result, peer=peer, sop_instance_uid=uid, what=what)
                _enqueue_forward(forward)
                forwards.append(forward)
    return forwards


def _enqueue_forward(forward: ResultForward, run_after=None) -> None:
    from .tasks import forward_result

    task = forward_result.using(run_after=run_after) if run_after else forward_result
    task.enqueue(forward.pk)


def forward_run(forward_id: int) -> str:
    """Send one result object; on failure try again later, FORWARD_ATTEMPTS times in all."""
    from sonoloop.dicom.send import Peer, SendError, send_file
    from sonoloop.dicom.tls import client_context
    from sonoloop.web.archive.services import instance_path

    forward = ResultForward.objects.select_related("peer").filter(pk=forward_id).first()
    if forward is None or forward.status in (ResultForward.SENT, ResultForward.FAILED):
        return forward.status if forward else "missing"
    peer = forward.peer
    forward.attempts += 1
    try:
        instance = Instance.objects.filter(sop_instance_uid=forward.sop_instance_uid).first()
        if instance is None:
            raise SendError(f"{forward.what} {forward.sop_instance_uid} is no longer in the archive")
        config = settings.CONFIG
        tls_context = client_context(config.tls_cert, config.tls_key, config.tls_ca) if peer.use_tls else None
        send_file(instance_path(instance), Peer(peer.ae_title, peer.host, peer.port), config.ae_title,
                  tls_context=tls_context)
    except SendError as exc:
        forward.last_error = str(exc)
        if forward.attempts >= FORWARD_ATTEMPTS:
            forward.status, forward.next_attempt_at = ResultForward.FAILED, None
            log.error("sending %s to %s failed for good after %d attempts: %s", forward.sop_instance_uid,
                      peer.ae_title, forward.attempts, exc)
        else:
            delay = FORWARD_FIRST_DELAY * 2 ** (forward.attempts - 1)
            forward.status, forward.next_attempt_at = ResultForward.RETRYING, timezone.now() + timedelta(seconds=delay)
            log.warning("sending %s to %s failed (attempt %d), again in %.0f s: %s", forward.sop_instance_uid,
                        peer.ae_title, forward.attempts, delay, exc)
        forward.save()
        if forward.status == ResultForward.RETRYING:
            _enqueue_forward(forward, run_after=forward.next_attempt_at)
        return forward.status
    forward.status, forward.sent_at, forward.last_error, forward.next_attempt_at = (
        ResultForward.SENT, timezone.now(), "", None)
    forward.save()
    return forward.status


def forward_summary(forward: ResultForward) -> dict:
    return {
        "what": forward.what,
        "sop_instance_uid": forward.sop_instance_uid,
        "peer": forward.peer.ae_title,
        "status": forward.status,
        "attempts": forward.attempts,
        "last_error": forward.last_error,
        "next_attempt_at": forward.next_attempt_at.isoformat() if forward.next_attempt_at else None,
        "sent_at": forward.sent_at.isoformat() if forward.sent_at else None,
    }


def result_labels(result: AnalysisResult) -> np.ndarray:
    with np.load(results_store().path(result.labels_key)) as data:
        return data["labels"]


def job_summary(job: AnalysisJob) -> dict:
    result = getattr(job, "result", None)
    return {
        "id": job.pk,
        "instance": job.instance.sop_instance_uid,
        "status": job.status,
        "reason": job.reason,
        "attempt": job.attempt,
        "retry_of": job.retry_of_id,
        "progress": round(job.progress, 3),
        "frames_done": job.frames_done,
        "frames_total": job.frames_total,
        "model": {"name": job.model_name, "version": job.model_version} if job.model_name else None,
        "worker": job.worker,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration_seconds": job.duration_seconds,
        "result_version": result.version if result else None,
    }


def ejection_fraction_summary(m: dict) -> dict:
    """The EF with its verdict, in one place for API clients: ``value`` is None unless reliable."""
    return {
        "value": m.get("ef"),
        "method": "single-plane area–length, median of the beats",
        "reliable": bool(m.get("reliable")),
        "verdict": m.get("reliability") or None,
        "reasons": m.get("reliability_reasons", []),
        "spread": m.get("ef_spread"),
        "beats": [{"ed": b["ed"], "es": b["es"], "ef": b["ef"], "plausible": b.get("plausible", True)}
                  for b in m.get("beats", [])],
        "implausible_frames": m.get("implausible_frames"),
        "frames": m.get("frames"),
    }


def result_summary(result: AnalysisResult) -> dict:
    return {
        "id": result.pk,
        "version": result.version,
        "job": result.job_id,
        "model": {"name": result.model_name, "version": result.model_version},
        "classes": result.classes,
        "segmentation": result.seg_sop_instance_uid or None,
        "structured_report": result.sr_sop_instance_uid or None,
        "measurements": result.measurements,
        "ejection_fraction": ejection_fraction_summary(result.measurements),
        "forwards": [forward_summary(f) for f in result.forwards.select_related("peer")],
        "created_at": result.created_at.isoformat(),
    }
