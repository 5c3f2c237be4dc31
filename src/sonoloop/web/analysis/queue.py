"""Analysis jobs: one for every image the archive indexes (queued, or skipped with the
reason), its task enqueued in the archive's index transaction so that an acknowledged image is
never left without its job; retries; jobs whose worker was lost put back in the queue."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from sonoloop.dicom.instance import sop_class_name
from sonoloop.web import jobs
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.removal import Removing
from sonoloop.web.errors import Conflict
from sonoloop.web.rows import PreparedInsert, PreparedUpdate

from .labels import results_store
from .models import AnalysisJob, AnalysisResult

log = logging.getLogger("sonoloop.analysis")

ULTRASOUND_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
}
MAX_ATTEMPTS = 3
_job_rows = PreparedInsert(AnalysisJob)  # a job per received image: the INSERT compiled once
_job_task = PreparedUpdate(AnalysisJob, "task_id")


def skip_reason(instance: Instance) -> str | None:
    if instance.sop_class_uid not in ULTRASOUND_IMAGES:
        return f"not an echo image: {sop_class_name(instance.sop_class_uid)} is not segmented"
    if not instance.rows or not instance.columns:
        return "the instance has no image"
    if instance.rejected_for:
        return f"rejected by a rejection note (code {instance.rejected_for})"
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


def on_instances_removing(sender, instances: list[Instance], hiding: bool = False, **kwargs):
    """Deleting images deletes the AI's results on them: their SEG and SR objects and label
    maps; a result whose SEG or SR alone is deleted forgets it. Rejecting them hides the SEG
    and SR too."""
    removing = Removing()
    pks = [i.pk for i in instances]
    uids = [i.sop_instance_uid for i in instances]
    for start in range(0, len(pks), 500):
        for result in AnalysisResult.objects.filter(instance_id__in=pks[start: start + 500]):
            removing.derived |= {uid for uid in (result.seg_sop_instance_uid, result.sr_sop_instance_uid) if uid}
            removing.files.append(results_store().path(result.labels_key))
        if hiding:
            continue
        AnalysisResult.objects.filter(seg_sop_instance_uid__in=uids[start: start + 500]).update(seg_sop_instance_uid="")
        AnalysisResult.objects.filter(sr_sop_instance_uid__in=uids[start: start + 500]).update(sr_sop_instance_uid="")
    return removing


def job_create(instance: Instance, retry_of: AnalysisJob | None = None) -> AnalysisJob:
    """A job for ``instance``: skipped (with the reason) or queued, its task enqueued in the
    caller's transaction."""
    reason = skip_reason(instance)
    if reason:
        return AnalysisJob.objects.create(instance=instance, status=AnalysisJob.SKIPPED, reason=reason,
                                          finished_at=timezone.now(), retry_of=retry_of)
    job = _job_rows.create(instance=instance, status=AnalysisJob.QUEUED, retry_of=retry_of)
    _enqueue(job)
    return job


def _enqueue(job: AnalysisJob) -> None:
    from .tasks import analyse_instance

    job.task_id = str(analyse_instance.enqueue(job.pk).id)  # the row names its current task
    _job_task.set(job.pk, job.task_id)


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
