"""Retraining runs: what a run was asked for, its progress and the version it produced."""

from django.conf import settings
from django.db import models

from sonoloop.web.registry.models import ModelVersion


class RetrainingJob(models.Model):
    QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
    STATUSES = [(s, s) for s in (QUEUED, RUNNING, DONE, FAILED, CANCELLED)]

    parent = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="retraining_jobs")
    name = models.CharField(max_length=128, help_text="The name the new version will get.")
    strategy = models.CharField(max_length=20)
    ratio = models.FloatField(null=True, blank=True)
    hyperparameters = models.JSONField(default=dict)
    status = models.CharField(max_length=10, choices=STATUSES, default=QUEUED, db_index=True)
    reason = models.TextField(blank=True)
    progress = models.JSONField(default=dict, help_text="epoch, epochs, loss, tuning Dice, seconds left, history")
    cancel_requested = models.BooleanField(default=False)
    result = models.OneToOneField(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="retraining_job")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=128, blank=True)
    task_id = models.CharField(max_length=64, blank=True, help_text="The task (django-tasks) that runs it.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
