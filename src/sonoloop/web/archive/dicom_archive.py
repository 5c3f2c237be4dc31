"""The DICOM node's view of the archive: :class:`sonoloop.dicom.node.Archive` over the services."""

from __future__ import annotations

import threading

from django.db import connection

from sonoloop.dicom import status
from sonoloop.dicom.archive import Destination, Located, Permissions
from sonoloop.dicom.query import Query

from sonoloop.web.audit.services import Actor

from . import commitment, services, trail
from .models import Instance


class DjangoArchive:
    """Each association runs in its own thread with its own database connection; what it
    stored is gathered per thread and written to the access trail when it ends."""

    def __init__(self):
        self._association = threading.local()

    def permissions(self, calling_ae: str, address: str,
                    certificate_names: frozenset[str] | None = None) -> Permissions:
        return services.peer_permissions(calling_ae, address, certificate_names)

    def store(self, raw: bytes, *, calling_ae: str, address: str, expected: tuple[str, str] | None = None,
              may_correct: bool = False, sha256: str | None = None) -> int:
        sender = services.Sender(calling_ae, address, may_correct)
        result = services.instance_store(raw, sender=sender, expected=expected, sha256=sha256)
        if not result.kept_existing:
            self._association.actor = Actor(calling_ae, address, "dicom")
            self._stored().append(result.instance.pk)
        return status.SUCCESS

    def _stored(self) -> list[int]:
        if not hasattr(self._association, "stored"):
            self._association.stored = []
        return self._association.stored

    def find(self, query: Query, *, calling_ae: str = "", address: str = ""):
        trail.record_query(Actor(calling_ae, address, "dicom"), query, "C-FIND")
        return services.query_records(query)

    def locate(self, query: Query, *, calling_ae: str = "", address: str = "", how: str = "C-GET") -> list[Located]:
        instances = list(services.instances_for(query).select_related("series__study__patient"))
        trail.record_transfer(Actor(calling_ae, address, "dicom"), instances, "R", how)
        return [Located(services.instance_path(i), i.sop_class_uid, i.transfer_syntax_uid) for i in instances]

    def move_destination(self, ae_title: str) -> Destination | None:
        return services.move_destination(ae_title)

    def commitment_request(self, transaction_uid: str, references: list[tuple[str, str]], *, calling_ae: str,
                           address: str) -> int:
        return commitment.commitment_request(transaction_uid, references, calling_ae, address).pk

    def commitment_report_here(self, request_id: int, send) -> bool:
        """Runs in a thread of its own (the node's, after the N-ACTION response is out)."""
        try:
            request = commitment.commitment_claim(request_id)
            if request is None:
                return False
            outcome = commitment.commitment_outcome(request)
            try:
                answer = send(outcome)
            except Exception as exc:  # released, aborted, or the requester cannot take it here
                commitment.commitment_release(request, f"on the requester's association ({exc})")
                return False
            if answer != status.SUCCESS:
                why = (f"it answered {answer:#06x}" if answer is not None else
                       "no answer: it released or aborted the association first")
                commitment.commitment_release(request, f"on the requester's association ({why})")
                return False
            commitment.commitment_reported(request, outcome, "same association")
            return True
        finally:
            connection.close()

    def association_ended(self) -> None:
        stored = self._stored()
        try:
            if stored:
                received = []
                for start in range(0, len(stored), 500):  # SQLite bounds the parameters of one query
                    received += Instance.objects.filter(pk__in=stored[start: start + 500]).select_related(
                        "series__study__patient")
                trail.record_transfer(self._association.actor, received, "C", "C-STORE")
        finally:
            stored.clear()
            connection.close()
