from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail is written by the services, never edited."""

    list_display = ("at", "event_id", "action", "outcome", "who", "source", "address", "patient_id",
                    "study_instance_uid", "instances")
    list_filter = ("event_id", "action", "source")
    search_fields = ("who", "patient_id", "study_instance_uid", "address")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
