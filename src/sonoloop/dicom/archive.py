"""What the DICOM node needs from an archive, and the values they exchange — no pynetdicom,
no side effects, so the web layer can implement it without importing the node."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .query import Query


@dataclass(frozen=True)
class Permissions:
    echo: bool
    store: bool
    query: bool  # C-FIND, C-GET and C-MOVE
    correct: bool = False  # may replace instances and details another sender stored


@dataclass(frozen=True)
class Located:
    """A stored instance to send: its file and what a presentation context needs."""

    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int
    tls: bool = False  # C-MOVE sub-associations to it run over TLS


@dataclass(frozen=True)
class CommitmentOutcome:
    """What the archive answers for one transaction: committed (class, instance) pairs and
    (class, instance, Failure Reason) for the others."""

    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    retrieve_ae: str = ""


class Archive(Protocol):
    """What the node needs from the archive; the web app implements it."""

    def permissions(self, calling_ae: str, address: str,
                    certificate_names: frozenset[str] | None = None) -> Permissions: ...

    def store(self, raw: bytes, *, calling_ae: str, address: str, expected: tuple[str, str] | None = None,
              may_correct: bool = False, sha256: str | None = None) -> int:
        """Persist and index one instance; ``expected`` is the request's (SOP Class, SOP Instance) UIDs;
        ``may_correct``: the peer is trusted for corrections; ``sha256``: the digest of ``raw``, when
        it was computed as the bytes arrived."""

    def find(self, query: Query, *, calling_ae: str, address: str) -> Iterable[dict]: ...

    def locate(self, query: Query, *, calling_ae: str, address: str, how: str) -> list[Located]: ...

    def move_destination(self, ae_title: str) -> Destination | None: ...

    def commitment_request(self, transaction_uid: str, references: list[tuple[str, str]], *, calling_ae: str,
                           address: str) -> int:
        """Record a storage commitment request (it must outlive a restart) and queue its report
        on a new association; returns its id."""

    def commitment_report_here(self, request_id: int, send: Callable[[CommitmentOutcome], int | None]) -> bool:
        """Decide the request's outcome and hand it to ``send`` (the requester's association;
        it returns the peer's status); True when it was delivered that way."""

    def association_ended(self) -> None: ...
