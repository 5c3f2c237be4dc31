"""The model registry: every version, which one is active, every decision, every retraining run.

A version is a self-describing folder on disk (``model.json`` + weights) that is never
changed after it is written; these rows index it and carry the metrics and decisions.
"""

from django.conf import settings
from django.db import models
from django.db.models import Q


class ModelVersion(models.Model):
    SHIPPED, RETRAINED, IMPORTED = "shipped", "retrained", "imported"

    name = models.CharField(max_length=128, unique=True)
    folder = models.CharField(max_length=1000, help_text="The model folder (absolute path).")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    origin = models.CharField(max_length=10, choices=[(o, o) for o in (SHIPPED, RETRAINED, IMPORTED)])
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    is_active = models.BooleanField(default=False, help_text="The version that segments arriving echoes.")
    heldout_dice = models.JSONField(default=dict, help_text="Mean Dice per structure on the locked held-out set.")
    annotated_dice = models.JSONField(default=dict, help_text="Mean Dice per structure on the approved annotations.")
    evaluated_at = models.DateTimeField(null=True, blank=True,
                                        help_text="When the held-out evaluation (a task queued at registration) "
                                                  "finished; promotion waits for it.")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["is_active"], condition=Q(is_active=True),
                                               name="one_active_model")]

    def __str__(self):
        return self.name


class ModelDecision(models.Model):
    """An activation or a refusal, with its numbers: the audit trail of promotion."""

    PROMOTED, FORCED, REJECTED, ROLLED_BACK, REGISTERED = "promoted", "forced", "rejected", "rolled back", "registered"
    ACTIONS = [(a, a) for a in (PROMOTED, FORCED, REJECTED, ROLLED_BACK, REGISTERED)]

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="decisions")
    previous = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                                 help_text="The version that was active when the decision was made.")
    action = models.CharField(max_length=12, choices=ACTIONS)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    margin = models.FloatField(null=True, blank=True)
    numbers = models.JSONField(default=dict, help_text="Held-out Dice of the candidate and of the active version.")
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]


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
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
