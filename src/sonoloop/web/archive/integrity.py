"""The archive's integrity check: every index row has its file and every file its row
(`sonoloop manage archive_check [--repair]`); a lost row is indexed again, an unreadable file
quarantined, nothing deleted."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from sonoloop.dicom import status
from sonoloop.dicom.instance import InvalidInstance, read_instance

from .models import Instance
from .ownership import Sender
from .store import filestore, index_stored_file

log = logging.getLogger("sonoloop.archive")


@dataclass
class ArchiveCheck:
    indexed: int
    missing_files: list[str]  # SOP Instance UIDs whose file is gone
    orphan_keys: list[str]  # files no index row points to (a crash between fsync and commit)
    reindexed: list[str] = field(default_factory=list)  # orphans indexed again from their own header
    quarantined: list[str] = field(default_factory=list)  # orphans moved aside: unreadable, or another copy


def archive_check(repair: bool = False, min_age_seconds: float = 600) -> ArchiveCheck:
    """Compare the index with the files: report missing files and unindexed (orphan) files.

    An orphan may be an acknowledged instance whose index row was lost (a crash or power cut
    between the file's fsync and the commit): ``repair`` indexes it again from its own header,
    and moves an orphan that cannot be indexed (unreadable, or a second copy of an indexed
    SOP Instance) to the ``quarantine`` folder beside the objects. Nothing is ever deleted.
    Files younger than ``min_age_seconds`` are left alone: they may belong to a C-STORE in
    progress, whose file is written before its index row commits.
    """
    store = filestore()
    keys = dict(Instance.every.values_list("file_key", "sop_instance_uid"))
    missing = [uid for key, uid in keys.items() if not store.path(key).exists()]
    report = ArchiveCheck(len(keys), missing, [])
    now = time.time()
    for path in sorted(store.root.glob("*/*" + store.suffix)):
        key = path.name[: -len(store.suffix)]
        if key in keys or now - path.stat().st_mtime < min_age_seconds:
            continue
        report.orphan_keys.append(key)
        if repair and not Instance.every.filter(file_key=key).exists():
            _repair_orphan(key, path, report)
    return report


def _repair_orphan(key: str, path: Path, report: ArchiveCheck) -> None:
    raw = path.read_bytes()
    try:
        _, record = read_instance(raw)
        if Instance.every.filter(sop_instance_uid=record.sop_instance_uid).exists():
            raise InvalidInstance("another copy of this SOP Instance is indexed", status.CANNOT_UNDERSTAND)
        index_stored_file(record, key, raw, Sender("archive_check", may_correct=False))
        report.reindexed.append(key)
        log.warning("archive_check: indexed %s again from its file %s", record.sop_instance_uid, key)
    except InvalidInstance as exc:
        quarantine = settings.CONFIG.data_dir / "quarantine"
        quarantine.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, quarantine / path.name)
        report.quarantined.append(key)
        log.warning("archive_check: moved %s to %s: %s", key, quarantine, exc)
