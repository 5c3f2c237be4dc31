"""The DICOM node's view of the archive: :class:`sonoloop.dicom.node.Archive` over the services."""

from __future__ import annotations

from django.db import connection

from sonoloop.dicom import status
from sonoloop.dicom.node import Destination, Located, Permissions
from sonoloop.dicom.query import Query

from . import services


class DjangoArchive:
    def permissions(self, calling_ae: str, address: str) -> Permissions:
        return services.peer_permissions(calling_ae, address)

    def store(self, raw: bytes, *, calling_ae: str, address: str, expected: tuple[str, str] | None = None,
              may_correct: bool = False) -> int:
        sender = services.Sender(calling_ae, address, may_correct)
        services.instance_store(raw, sender=sender, expected=expected)
        return status.SUCCESS

    def find(self, query: Query):
        return services.query_records(query)

    def locate(self, query: Query) -> list[Located]:
        return [
            Located(services.instance_path(i), i.sop_class_uid, i.transfer_syntax_uid)
            for i in services.instances_for(query)
        ]

    def move_destination(self, ae_title: str) -> Destination | None:
        return services.move_destination(ae_title)

    def association_ended(self) -> None:
        # Each association runs in its own thread with its own database connection.
        connection.close()
