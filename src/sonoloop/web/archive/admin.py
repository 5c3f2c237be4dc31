from django.contrib import admin

from .models import CommitmentRequest, DicomPeer, Instance, Patient, Series, Study


@admin.register(DicomPeer)
class DicomPeerAdmin(admin.ModelAdmin):
    list_display = ("ae_title", "host", "port", "may_store", "may_query", "is_move_destination", "description")
    list_editable = ("may_store", "may_query", "is_move_destination")
    search_fields = ("ae_title", "host", "description")


class NoDeleteHere(admin.ModelAdmin):
    """The admin's delete cascades through the index rows only: it would leave the files, the
    SEG/SR and results behind and take the immutable annotations and their history with it
    (security review #25). Stored data are not deleted here; removing images safely is a
    service of its own (archive.removal: the study page, `sonoloop delete`, DICOMweb DELETE), with its
    own trail."""

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Patient)
class PatientAdmin(NoDeleteHere):
    list_display = ("patient_id", "patient_name", "patient_birth_date", "patient_sex")
    search_fields = ("patient_id", "patient_name")


@admin.register(Study)
class StudyAdmin(NoDeleteHere):
    list_display = ("study_date", "patient", "study_description", "accession_number", "modalities")
    search_fields = ("study_instance_uid", "accession_number", "study_description", "patient__patient_name")
    raw_id_fields = ("patient",)


@admin.register(Series)
class SeriesAdmin(NoDeleteHere):
    list_display = ("series_instance_uid", "modality", "series_number", "series_description")
    raw_id_fields = ("study",)


@admin.register(Instance)
class InstanceAdmin(NoDeleteHere):
    list_display = ("sop_instance_uid", "sop_class_uid", "number_of_frames", "transfer_syntax_uid", "received_at",
                    "rejected_for")
    list_filter = ("rejected_for",)
    search_fields = ("sop_instance_uid",)
    raw_id_fields = ("series",)
    readonly_fields = ("file_key", "file_size", "sha256", "received_at", "updated_at", "rejected_for", "rejected_at",
                       "rejected_by")

    def get_queryset(self, request):
        return Instance.every.all()  # rejected ones too, with the note that rejected them


@admin.register(CommitmentRequest)
class CommitmentRequestAdmin(admin.ModelAdmin):
    """Storage commitment requests and how each was answered; written by the node only."""

    list_display = ("transaction_uid", "calling_ae", "status", "delivery", "committed", "failed", "created_at",
                    "reported_at")
    list_filter = ("status", "delivery")
    search_fields = ("transaction_uid", "calling_ae")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
