"""The access trail: one row per event — who read, sent, changed or deleted whose data, from where, when.

The vocabulary is DICOM's audit messages (PS3.15 A.5): an event ID (110103 DICOM Instances
Accessed, 110104 DICOM Instances Transferred, 110105 DICOM Study Deleted, 110112 Query, 110114
User Authentication, …) with an action code (C create, R read, U update, D delete, E execute)
and an outcome (0 success, 4 minor failure, 8 serious failure). Patients and studies are kept
as their identifiers, not as foreign keys: the trail outlives deleted data.
"""

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    event_id = models.CharField(max_length=8, help_text="DICOM audit event ID (DCM code), e.g. 110103")
    action = models.CharField(max_length=1, help_text="C, R, U, D or E")
    outcome = models.PositiveSmallIntegerField(default=0, help_text="0 success, 4 minor, 8 serious failure")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    who = models.CharField(max_length=200, help_text="User name or calling AE title")
    source = models.CharField(max_length=16, help_text="web, dicom, cli or worker")
    address = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField(max_length=64, blank=True, db_index=True)
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    instances = models.PositiveIntegerField(default=0, help_text="How many instances the event concerned")
    detail = models.TextField(blank=True, help_text="What was asked or done: query keys, the object, a reason")

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["who", "at"], name="audit_who_at")]

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.event_id}/{self.action} {self.who} {self.patient_id}"
