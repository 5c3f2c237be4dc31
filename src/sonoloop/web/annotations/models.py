"""Expert annotations of an instance: immutable versions with provenance and a review state.

Each save is a new version (1, 2, … per instance) whose masks never change; only its
review status moves (draft → submitted → approved, or back to draft), and every move is
recorded with who and when. Only approved annotations are training data.
"""

from django.conf import settings
from django.db import models

from sonoloop.web.analysis.models import AnalysisResult
from sonoloop.web.archive.models import Instance


class Annotation(models.Model):
    DRAFT, SUBMITTED, APPROVED, WITHDRAWN = "draft", "submitted", "approved", "withdrawn"
    STATUSES = [(s, s) for s in (DRAFT, SUBMITTED, APPROVED, WITHDRAWN)]

    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotations",
                                 help_text="Empty once the image is deleted: the annotation stays as a record.")
    sop_instance_uid = models.CharField("SOP Instance UID", max_length=64, blank=True,
                                        help_text="Of the annotated image, kept when the image is deleted.")
    study_instance_uid = models.CharField(max_length=64, blank=True)
    source_deleted_at = models.DateTimeField(null=True, blank=True,
                                             help_text="When the annotated image was deleted from the archive.")
    version = models.PositiveIntegerField(help_text="1, 2, … per instance; a save never overwrites.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
                               help_text="The version this one was edited from.")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="annotations")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=DRAFT, db_index=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    started_from = models.ForeignKey(AnalysisResult, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="annotations", help_text="The AI result the editing began from.")
    model_name = models.CharField(max_length=128, blank=True, help_text="Of the AI result it started from.")
    model_version = models.CharField(max_length=64, blank=True)
    frames = models.JSONField(default=list, help_text="Frame numbers (1-based) the annotation covers.")
    document_key = models.CharField(max_length=64, help_text="The schema document (gzip JSON) in the annotations folder.")
    agreement = models.JSONField(default=dict, help_text="Dice per structure between the AI result and this annotation.")
    comment = models.TextField(blank=True)
    seg_sop_instance_uid = models.CharField(max_length=64, blank=True, help_text="Set when exported as DICOM SEG.")

    class Meta:
        ordering = ["-version"]
        constraints = [models.UniqueConstraint(fields=["instance", "version"], name="one_annotation_per_version")]

    def __str__(self):
        deleted = " (image deleted)" if self.source_deleted_at else ""
        return f"annotation v{self.version} of {self.sop_instance_uid}{deleted} by {self.author}"


class AnnotationEvent(models.Model):
    """One change of review status (or an export), for the audit trail."""

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="events")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    at = models.DateTimeField(auto_now_add=True)
    action = models.CharField(max_length=16, help_text="created, submitted, approved, returned, exported")
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
