"""The index: Patient → Study → Series → Instance, plus the DICOM peers we talk to.

Files live in the file store under ``Instance.file_key`` (server-generated); UIDs live
here, validated.
"""

from django.db import models


class Patient(models.Model):
    """A patient is its Patient ID together with the Issuer of Patient ID; a blank ID is no
    identity, so patients without one are never merged (each of their studies has its own)."""

    patient_id = models.CharField("Patient ID", max_length=64, blank=True)
    issuer_of_patient_id = models.CharField("issuer of Patient ID", max_length=64, blank=True)
    patient_name = models.CharField("name", max_length=324, blank=True, db_index=True)
    patient_birth_date = models.CharField("birth date", max_length=8, blank=True)
    patient_sex = models.CharField("sex", max_length=16, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["patient_id", "issuer_of_patient_id"], condition=~models.Q(patient_id=""),
                                    name="patient_identity"),
        ]
        indexes = [models.Index(fields=["patient_id"], name="patient_id_idx")]

    def __str__(self):
        issuer = f" ({self.issuer_of_patient_id})" if self.issuer_of_patient_id else ""
        return f"{self.patient_name or '(no name)'} [{self.patient_id}{issuer}]"


class Study(models.Model):
    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="studies")
    study_instance_uid = models.CharField(max_length=64, unique=True)
    study_date = models.CharField(max_length=8, blank=True, db_index=True)
    study_time = models.CharField(max_length=16, blank=True)
    study_id = models.CharField("Study ID", max_length=16, blank=True)
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)
    study_description = models.CharField(max_length=64, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    modalities = models.CharField("modalities in study", max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "studies"
        ordering = ["-study_date", "-study_time", "-id"]

    def __str__(self):
        return f"{self.study_date} {self.study_description or self.study_instance_uid}"


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    modality = models.CharField(max_length=16, blank=True, db_index=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=64, blank=True)
    series_date = models.CharField(max_length=8, blank=True)
    body_part_examined = models.CharField(max_length=16, blank=True)

    class Meta:
        verbose_name_plural = "series"
        ordering = ["series_number", "id"]

    def __str__(self):
        return f"{self.modality} {self.series_number or ''} {self.series_description}".strip()


class PresentInstances(models.Manager):
    """Instances not rejected by a Key Object Selection rejection note (IOCM): what queries,
    retrievals, pages, analysis and training see."""

    def get_queryset(self):
        return super().get_queryset().filter(rejected_for="")


class Instance(models.Model):
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField("SOP Instance UID", max_length=64, unique=True)
    sop_class_uid = models.CharField("SOP Class UID", max_length=64, db_index=True)
    instance_number = models.IntegerField(null=True, blank=True)
    number_of_frames = models.IntegerField(default=1)
    rows = models.IntegerField(null=True, blank=True)
    columns = models.IntegerField(null=True, blank=True)
    photometric_interpretation = models.CharField(max_length=16, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    content_date = models.CharField(max_length=8, blank=True)
    content_time = models.CharField(max_length=16, blank=True)
    file_key = models.CharField(max_length=32, unique=True)
    file_size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True,
                              help_text="Digest of the stored file; storage commitment checks the bytes against it.")
    received_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    source_ae = models.CharField("received from", max_length=64, blank=True)
    source_host = models.CharField("sender's address", max_length=255, blank=True)
    rejected_for = models.CharField(
        max_length=16, blank=True,
        help_text="The code of the rejection note (IOCM) that hid it: 113001 quality, 113037 patient safety, "
                  "113038 incorrect modality worklist; blank: present.")
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejected_by = models.CharField("rejection note", max_length=64, blank=True,
                                   help_text="SOP Instance UID of the Key Object Selection document.")

    objects = PresentInstances()  # the default: rejected instances are hidden everywhere
    every = models.Manager()  # including rejected ones: storing, integrity, the admin

    class Meta:
        ordering = ["instance_number", "id"]
        # only the rejected rows: an index over every row's '' made SQLite's planner pick it over
        # series_id for "present instances of this series" and scan the whole table per row
        indexes = [models.Index(fields=["rejected_for"], condition=~models.Q(rejected_for=""),
                                name="instance_rejected_idx")]

    def __str__(self):
        return self.sop_instance_uid


class DicomPeer(models.Model):
    """Another DICOM node: who may store, who may query/retrieve, where C-MOVE may send."""

    ae_title = models.CharField("AE title", max_length=16, unique=True)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    may_store = models.BooleanField(default=True, help_text="May send images here (C-STORE).")
    may_query = models.BooleanField(default=False, help_text="May query and retrieve (C-FIND, C-GET, C-MOVE).")
    is_move_destination = models.BooleanField(
        default=False, help_text="C-MOVE requests may send images to this peer."
    )
    may_correct = models.BooleanField(
        default=False,
        help_text="Trusted for corrections: may replace instances and update patient and study details that "
                  "another sender stored (never an instance with AI results or annotations, never a study's patient).",
    )
    receives_results = models.BooleanField(
        default=False, help_text="Receives every segmentation and measurement report Sonoloop makes (C-STORE)."
    )
    use_tls = models.BooleanField(
        default=False, help_text="Sonoloop connects to it over TLS (results, C-MOVE), verifying its certificate "
                                 "against SONOLOOP_DICOM_TLS_CA.")
    tls_identity = models.CharField(
        max_length=255, blank=True,
        help_text="With client certificates required (SONOLOOP_DICOM_TLS_CA), the name its certificate must carry "
                  "(subject CN or subjectAltName); blank: its AE title or its host.")
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["ae_title"]
        verbose_name = "DICOM peer"

    def __str__(self):
        return f"{self.ae_title} @ {self.host}:{self.port}"


class CommitmentRequest(models.Model):
    """A Storage Commitment Push Model request (N-ACTION): kept until its report is delivered,
    so that a restart answers it afterwards."""

    PENDING, REPORTING, REPORTED, FAILED = "pending", "reporting", "reported", "failed"
    STATUSES = [(s, s) for s in (PENDING, REPORTING, REPORTED, FAILED)]

    transaction_uid = models.CharField("Transaction UID", max_length=64)
    calling_ae = models.CharField("requested by", max_length=64)
    address = models.CharField(max_length=255, blank=True)
    references = models.JSONField(help_text="[[SOP Class UID, SOP Instance UID], …] as requested")
    status = models.CharField(max_length=10, choices=STATUSES, default=PENDING, db_index=True)
    delivery = models.CharField(max_length=20, blank=True, help_text="same association or new association")
    committed = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    failures = models.JSONField(default=list, help_text="[[SOP Class UID, SOP Instance UID, Failure Reason], …]")
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["calling_ae", "transaction_uid"],
                                               name="one_request_per_transaction")]

    def __str__(self):
        return f"{self.transaction_uid} from {self.calling_ae}"
