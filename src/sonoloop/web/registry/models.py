"""The model registry: every version, which one is active, every decision.

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
        db_table = "learning_modelversion"  # made by the learning app before the registry had its own
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
        db_table = "learning_modeldecision"
        ordering = ["-at", "-id"]
