"""Analysis jobs (one per run of the model on an instance) and their results.

A job is never rerun in place: a retry or a new model run creates a new job, and each
successful job has its own result with the next version number for that instance.
"""

from django.db import models

from sonoloop.web.archive.models import DicomPeer, Instance


class AnalysisJob(models.Model):
    QUEUED, RUNNING, DONE, FAILED, SKIPPED = "queued", "running", "done", "failed", "skipped"
    STATUSES = [(s, s) for s in (QUEUED, RUNNING, DONE, FAILED, SKIPPED)]

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="analysis_jobs")
    status = models.CharField(max_length=8, choices=STATUSES, default=QUEUED, db_index=True)
    reason = models.TextField(blank=True, help_text="Why the job was skipped or failed, for a person to act on.")
    attempt = models.PositiveIntegerField(default=1, help_text="Runs of this job so far (a lost worker re-queues it).")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    model_name = models.CharField(max_length=128, blank=True)
    model_version = models.CharField(max_length=64, blank=True)
    frames_total = models.PositiveIntegerField(default=0)
    frames_done = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=128, blank=True)
    task_id = models.CharField(max_length=64, blank=True, help_text="The task (django-tasks) now running or queued for it.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self):
        return f"job {self.pk} ({self.status}) for {self.instance.sop_instance_uid}"

    @property
    def progress(self) -> float:
        return self.frames_done / self.frames_total if self.frames_total else 0.0

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return round((self.finished_at - self.started_at).total_seconds(), 2)
        return None


class AnalysisResult(models.Model):
    job = models.OneToOneField(AnalysisJob, on_delete=models.CASCADE, related_name="result")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="analysis_results")
    version = models.PositiveIntegerField(help_text="1, 2, … per source instance; results are never overwritten.")
    model_name = models.CharField(max_length=128)
    model_version = models.CharField(max_length=64)
    labels_key = models.CharField(max_length=64, help_text="Per-frame label maps (.npz) in the results folder.")
    classes = models.JSONField(default=list)
    seg_sop_instance_uid = models.CharField(max_length=64, blank=True)
    sr_sop_instance_uid = models.CharField(max_length=64, blank=True)
    measurements = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["instance", "version"], name="one_result_per_version")]

    def __str__(self):
        return f"result v{self.version} of {self.instance.sop_instance_uid}"


class ResultForward(models.Model):
    """One SEG or SR sent to one peer that receives results; retried with back-off."""

    QUEUED, SENT, RETRYING, FAILED = "queued", "sent", "retrying", "failed"
    STATUSES = [(s, s) for s in (QUEUED, SENT, RETRYING, FAILED)]

    result = models.ForeignKey(AnalysisResult, on_delete=models.CASCADE, related_name="forwards")
    peer = models.ForeignKey(DicomPeer, on_delete=models.CASCADE, related_name="forwards")
    sop_instance_uid = models.CharField(max_length=64)
    what = models.CharField(max_length=8, help_text="SEG or SR")
    status = models.CharField(max_length=8, choices=STATUSES, default=QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self):
        return f"{self.what} {self.sop_instance_uid} → {self.peer.ae_title} ({self.status})"


class StudyMeasurement(models.Model):
    """Measurements that need two loops of one study: LV volumes and EF by the biplane method
    of disks from an apical 4-chamber and an apical 2-chamber result. A new row each time a
    newer result of either view arrives."""

    study = models.ForeignKey("archive.Study", on_delete=models.CASCADE, related_name="measurements")
    four_chamber = models.ForeignKey(AnalysisResult, on_delete=models.CASCADE, related_name="+")
    two_chamber = models.ForeignKey(AnalysisResult, on_delete=models.CASCADE, related_name="+")
    method = models.CharField(max_length=64, default="biplane method of disks")
    values = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
