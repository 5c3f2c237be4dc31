"""The access trail for admins: filter by person, patient, study, event; newest first."""

from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.shortcuts import render

from sonoloop.web.accounts.roles import role_required

from .models import AuditEvent
from .services import EVENTS


@role_required("admin")
def events(request):
    filters = {key: request.GET.get(key, "").strip() for key in ("who", "patient_id", "study", "event")}
    rows = AuditEvent.objects.all()
    if filters["who"]:
        rows = rows.filter(who=filters["who"])
    if filters["patient_id"]:
        rows = rows.filter(patient_id=filters["patient_id"])
    if filters["study"]:
        rows = rows.filter(study_instance_uid=filters["study"])
    if filters["event"] in EVENTS:
        rows = rows.filter(event_id=filters["event"])
    page = Paginator(rows, 100).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(request, "audit/events.html", {"page": page, "filters": filters, "events": EVENTS,
                                                 "query": query})
