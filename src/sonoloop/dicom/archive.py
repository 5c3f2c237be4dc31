"""What the DICOM node needs from an archive, and the values they exchange — no pynetdicom,
no side effects, so the web layer can implement it without importing the node."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


class Archive(Protocol):
    """What the node needs from the archive; the web app implements it."""

    def permissions(self, calling_ae: str, address: str,
                    certificate_names: frozenset[str] | None = None) -> Permissions: ...

    def store(self, raw: bytes, *, calling_ae: str, address: str, expected: tuple[str, str] | None = None,
              may_correct: bool = False) -> int:
        """Persist and index one instance; ``expected`` is the request's (SOP Class, SOP Instance) UIDs;
        ``may_correct``: the peer is trusted for corrections."""

    def find(self, query: Query, *, calling_ae: str, address: str) -> Iterable[dict]: ...

    def locate(self, query: Query, *, calling_ae: str, address: str, how: str) -> list[Located]: ...

    def move_destination(self, ae_title: str) -> Destination | None: ...

    def association_ended(self) -> None: ...
