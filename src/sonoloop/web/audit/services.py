"""Writing and reading the access trail. The archive, annotation and account services call
:func:`audit_record`; nothing here knows those apps (patients and studies are identifiers).

Reads of the same study by the same person within ``REPEAT_SECONDS`` are recorded once: a
viewer fetches a cine frame by frame, and one row says as much as 120.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from django.conf import settings

from .models import AuditEvent

log = logging.getLogger("sonoloop.audit")

EVENTS = {
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110112": "Query",
    "110114": "User Authentication",
}
ACCESSED, TRANSFERRED, DELETED, EXPORT, IMPORT, PATIENT_RECORD, QUERY, AUTHENTICATION = EVENTS
REPEAT_SECONDS = 60


@dataclass(frozen=True)
class Actor:
    """Who does something: a person (user) or a DICOM peer (calling AE title), and from where."""

    who: str
    address: str = ""
    source: str = "web"  # web, dicom, cli or worker (the analysis worker)
    user_id: int | None = None


def actor_of(request) -> Actor:
    user = getattr(request, "user", None)
    authenticated = bool(getattr(user, "is_authenticated", False))
    return Actor(user.get_username() if authenticated else "(anonymous)", request.META.get("REMOTE_ADDR", ""),
                 "web", user.pk if authenticated else None)


_recent: dict[tuple, float] = {}
_recent_lock = threading.Lock()


def _repeated(key: tuple) -> bool:
    now = time.monotonic()
    with _recent_lock:
        if len(_recent) > 50_000:
            _recent.clear()
        last = _recent.get(key)
        if last is not None and now - last < REPEAT_SECONDS:
            return True
        _recent[key] = now
        return False


def audit_record(event_id: str, action: str, actor: Actor, *, patient_id: str = "", study_instance_uid: str = "",
                 instances: int = 0, detail: str = "", outcome: int = 0, once_a_minute: bool = False) -> None:
    """One row of the trail. A failure to write it is logged, never raised into the caller's work."""
    if once_a_minute and _repeated((event_id, action, actor.who, actor.address, study_instance_uid, patient_id)):
        return
    try:
        AuditEvent.objects.create(
            event_id=event_id, action=action, outcome=outcome, user_id=actor.user_id, who=actor.who[:200],
            source=actor.source, address=actor.address[:64], patient_id=patient_id[:64],
            study_instance_uid=study_instance_uid[:64], instances=instances, detail=detail[:2000],
        )
    except Exception:
        log.exception("the access trail could not record %s/%s by %s", event_id, action, actor.who)


def on_logged_in(sender, request, user, **kwargs) -> None:
    audit_record(AUTHENTICATION, "E", actor_of(request), detail="login")


def on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    address = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    audit_record(AUTHENTICATION, "E", Actor(str(credentials.get("username", ""))[:150], address), outcome=4,
                 detail="failed sign-in")


# -- export: RFC 5424 syslog lines carrying DICOM audit messages (PS3.15 A.5.1) -------------

_PRI = 10 * 8 + 5  # facility authpriv, severity notice


def _participants(event: AuditEvent) -> str:
    parts = []
    if event.patient_id:
        parts.append(f'<ParticipantObjectIdentification ParticipantObjectID={quoteattr(event.patient_id)} '
                     f'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
                     f'<ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" '
                     f'originalText="Patient Number"/></ParticipantObjectIdentification>')
    if event.study_instance_uid:
        parts.append(f'<ParticipantObjectIdentification ParticipantObjectID={quoteattr(event.study_instance_uid)} '
                     f'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">'
                     f'<ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
                     f'originalText="Study Instance UID"/>'
                     f'<ParticipantObjectDescription>{event.instances} instances</ParticipantObjectDescription>'
                     f'</ParticipantObjectIdentification>')
    if event.detail and event.event_id == QUERY:
        parts.append(f'<ParticipantObjectIdentification ParticipantObjectID="query" ParticipantObjectTypeCode="2" '
                     f'ParticipantObjectTypeCodeRole="24"><ParticipantObjectIDTypeCode csd-code="110181" '
                     f'codeSystemName="DCM" originalText="SOP Class UID"/>'
                     f'<ParticipantObjectQuery>{_xml_text(event.detail)}</ParticipantObjectQuery>'
                     f'</ParticipantObjectIdentification>')
    return "".join(parts)


def _xml_text(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()  # PS3.15: the query is base64


def syslog_line(event: AuditEvent) -> str:
    """One RFC 5424 line (MSGID ``DICOM+RFC3881``) whose message is the event's AuditMessage XML."""
    timestamp = event.at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    requestor = (f'<ActiveParticipant UserID={quoteattr(event.who)} UserIsRequestor="true" '
                 f'NetworkAccessPointID={quoteattr(event.address or "-")} NetworkAccessPointTypeCode="2"/>')
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>'
           f'<EventIdentification EventActionCode="{event.action}" EventDateTime="{timestamp}" '
           f'EventOutcomeIndicator="{event.outcome}"><EventID csd-code="{event.event_id}" codeSystemName="DCM" '
           f'originalText={quoteattr(EVENTS.get(event.event_id, event.event_id))}/></EventIdentification>'
           f'{requestor}<AuditSourceIdentification AuditSourceID={quoteattr(settings.CONFIG.ae_title)}/>'
           f'{_participants(event)}</AuditMessage>')
    host = socket.gethostname() or "-"
    return f"<{_PRI}>1 {timestamp} {host} sonoloop - DICOM+RFC3881 - \ufeff{xml}"
