"""Running one analysis job: every frame through the active model, the label maps kept, a
DICOM Segmentation and Structured Report stored, the measurements and a new result version
recorded, the results queued for the peers that receive them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import io
import logging
import threading
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from sonoloop.web import jobs
from sonoloop.web.archive.models import Instance
from sonoloop.web.registry import services as registry

from .biplane import biplane_update
from .labels import results_store
from .forwarding import forwards_queue
from .models import AnalysisJob, AnalysisResult

log = logging.getLogger("sonoloop.analysis")


class AnalysisError(Exception):
    """A job that cannot succeed as it stands; the message is for a person to act on."""


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


def active_model() -> ActiveModel:
    """The active version, reloaded when another version became active since the last job."""
    global _model
    config = settings.CONFIG
    folder = registry.active_model_folder()
    with _model_lock:
        if _model is None or _model.folder != folder:
            _model = ActiveModel(folder, config.inference_engine)
        return _model


def warm_up() -> None:
    """Load the active model, and so compile its engine, before any job asks for it: a worker
    that just started (or was restarted after a crash) runs its first echo at full speed
    instead of paying the compile inside that job. A job arriving meanwhile waits for it."""
    from django.db import connection

    began = time.monotonic()
    try:
        model = active_model()
    except Exception as exc:  # the first job will fail with the reason; nothing to do here
        log.warning("the model could not be loaded ahead of the first job: %s", exc)
    else:
        try:  # what the first job would otherwise do for the first time: import and read highdicom (1 s)
            from sonoloop.echo.analyse import rehearse_outputs

            rehearse_outputs(model.classes)
        except Exception:  # the jobs will say what is wrong; the model is ready either way
            log.exception("rehearsing the SEG and SR at worker start failed")
        log.info("model %s %s ready (engine %s) in %.1f s", model.name, model.version,
                 model.segmenter.engine.name, time.monotonic() - began)
    finally:
        connection.close()


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
    ended = AnalysisJob.objects.filter(pk=job.pk).first()
    return ended.status if ended else "missing"  # deleted with its image meanwhile


def _fail(job: AnalysisJob, reason: str) -> None:
    AnalysisJob.objects.filter(pk=job.pk, status=AnalysisJob.RUNNING).update(
        status=AnalysisJob.FAILED, reason=reason, finished_at=timezone.now())
    log.warning("job %s for %s failed: %s", job.pk, job.instance.sop_instance_uid, reason)


def _analyse(job: AnalysisJob) -> None:
    from sonoloop.echo.analyse import DicomOutputs, analyse_loop
    from sonoloop.ml.preprocess import FrameError
    from sonoloop.web.archive.services import dataset_store, own_device

    model = _model_for(job)
    frames, header, bits = _frames_of(job)
    version = _next_version(job.instance)
    outputs = DicomOutputs(model.name, model.version, own_device(),
                           seg_series_number=900 + version, sr_series_number=950 + version,
                           description=f"AI segmentation v{version} ({model.name})", device_uid=_device_uid(),
                           uid_seed=f"{_device_uid()} analysis job {job.pk}")

    def store_segmentation(dataset) -> None:  # stored before the measurements and SR are made
        _require_image(job)
        dataset_store(dataset)

    try:
        analysis = analyse_loop(frames, header, bits, model.segmenter, outputs=outputs,
                                on_progress=_progress_writer(job), on_segmentation=store_segmentation)
    except FrameError as exc:
        raise AnalysisError(f"a frame cannot be segmented: {exc}") from None
    del frames
    try:
        _require_image(job)
    except AnalysisError:
        _remove_stored_outputs(analysis)
        raise
    labels_key, seg_uid, sr_uid = _store_outputs(analysis)
    try:
        _record(job, model, analysis, labels_key, seg_uid, sr_uid)
    except AnalysisError:  # deleted while the SR and the label maps were being stored
        _remove_stored_outputs(analysis, labels_key)
        raise


def _require_image(job: AnalysisJob) -> None:
    """Refuses to go on with the results of an image deleted (or rejected) meanwhile: its SEG
    and SR would bring the patient back."""
    if not Instance.objects.filter(pk=job.instance_id).exists():
        raise AnalysisError("the image was deleted or rejected while it was analysed; nothing is stored")


def _remove_stored_outputs(analysis, labels_key: str = "") -> None:
    """The SEG (and SR, and label maps) stored for an image that was deleted while they were
    being made: the deletion could not know them (no result row names them yet), so they go
    here, with their series, study and patient if nothing else is left in them, and a row in
    the access trail."""
    from sonoloop.web.archive.removal import remove_instances
    from sonoloop.web.audit.services import Actor

    if labels_key:
        results_store().delete(labels_key)
    uids = [d.SOPInstanceUID for d in (analysis.segmentation, analysis.report) if d is not None]
    stored = Instance.every.filter(sop_instance_uid__in=uids)
    if stored.exists():
        remove_instances(stored, actor=Actor("analysis worker", source="worker"),
                         reason="its image was deleted while it was analysed")


def _model_for(job: AnalysisJob) -> ActiveModel:
    from sonoloop.ml.engines import EngineError
    from sonoloop.ml.modelfolder import ModelFolderError

    try:
        model = active_model()
    except (ModelFolderError, EngineError) as exc:
        raise AnalysisError(f"the model cannot be loaded: {exc}") from None
    AnalysisJob.objects.filter(pk=job.pk).update(model_name=model.name, model_version=model.version)
    return model


def _frames_of(job: AnalysisJob):
    from sonoloop.dicom.pixels import NoPixelData, all_frames
    from sonoloop.web.archive.services import instance_path

    try:
        frames, header, bits = all_frames(instance_path(job.instance), luma=True)
    except NoPixelData as exc:
        raise AnalysisError(str(exc)) from None
    except FileNotFoundError:
        raise AnalysisError("the stored file is missing (see `sonoloop manage archive_check`)") from None
    except Exception as exc:  # the decoders raise many kinds on broken pixel data
        raise AnalysisError(f"the pixel data cannot be decoded: {exc}") from None
    AnalysisJob.objects.filter(pk=job.pk).update(frames_total=len(frames))
    return frames, header, bits


def _progress_writer(job: AnalysisJob):
    """frames_done on the job row, at most once a second (and at the end)."""
    last_update = [time.monotonic()]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last_update[0] >= 1.0 or done == total:
            last_update[0] = time.monotonic()
            AnalysisJob.objects.filter(pk=job.pk).update(frames_done=done)

    return progress


def _next_version(instance) -> int:
    return (AnalysisResult.objects.filter(instance=instance).aggregate(v=Max("version"))["v"] or 0) + 1


def _store_outputs(analysis) -> tuple[str, str, str]:
    """The label maps in the results store and the SR in the archive (the SEG is stored
    already): (labels key, SEG UID, SR UID)."""
    from sonoloop.web.archive.services import dataset_store

    def put_labels() -> str:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, labels=analysis.labels)
        return results_store().put(buffer.getvalue())

    # compressing the label maps (zlib lets go of the GIL) runs beside writing the SR
    with ThreadPoolExecutor(1, thread_name_prefix="sonoloop-labels") as pool:
        labels_key = pool.submit(put_labels)
        if analysis.report is not None:
            dataset_store(analysis.report)
        uids = [dataset.SOPInstanceUID if dataset is not None else "" for dataset in (analysis.segmentation,
                                                                                       analysis.report)]
        return labels_key.result(), uids[0], uids[1]


def _record(job: AnalysisJob, model: ActiveModel, analysis, labels_key: str, seg_uid: str, sr_uid: str) -> None:
    """The result row, its forwards and the biplane update, and the job done — in one
    transaction, which first makes sure the image is still there and holds it until the result
    names the SEG and SR: a deletion then either came first (AnalysisError) or waits and takes
    them with the image (``remove_instances`` locks its instances before it looks for what was
    made from them)."""
    measurements = analysis.measurements
    for attempt in range(3):  # two runs on one instance finishing together: the second takes the next number
        try:
            with transaction.atomic():
                if not Instance.objects.select_for_update().filter(pk=job.instance_id).values_list("pk").first():
                    raise AnalysisError("the image was deleted or rejected while it was analysed; nothing is stored")
                result = AnalysisResult.objects.create(
                    job=job, instance=job.instance, version=_next_version(job.instance), model_name=model.name,
                    model_version=model.version, labels_key=labels_key, classes=model.classes,
                    seg_sop_instance_uid=seg_uid, sr_sop_instance_uid=sr_uid, measurements=measurements)
                forwards_queue(result)
                if measurements.get("view") in ("A4C", "A2C"):
                    biplane_update(result)
                AnalysisJob.objects.filter(pk=job.pk).update(status=AnalysisJob.DONE, finished_at=timezone.now(),
                                                             frames_done=len(analysis.labels),
                                                             heartbeat_at=timezone.now(), reason="")
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _device_uid() -> str:
    """A stable UID for this Sonoloop installation as the observing device of its reports."""
    from sonoloop.web.archive.services import own_uid

    return own_uid()
