"""Storing instances: room checked, the file first (fsync), then the index in one transaction
with the re-send policy; the parents and who may change them are ``ownership``'s."""

from __future__ import annotations

import errno
import hashlib
import shutil
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from sonoloop.dicom import status
from sonoloop.dicom.filestore import FileStore, StorageFull, new_key
from sonoloop.dicom.instance import InstanceRecord, InvalidInstance, read_instance
from sonoloop.dicom.rejection import KEY_OBJECT_SELECTION

from . import previews
from .models import Instance
from ..rows import PreparedInsert
from .ownership import Sender, StoreRefused, forget_cached_parents, series_id_for
from .signals import instance_indexed, instance_replacing

log = logging.getLogger("sonoloop.archive")


@lru_cache(maxsize=1)
def filestore() -> FileStore:
    config = settings.CONFIG
    return FileStore(config.objects_dir, config.tmp_dir)


def instance_path(instance: Instance) -> Path:
    return filestore().path(instance.file_key)


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    created: bool
    replaced: bool  # an earlier copy with the same SOP Instance UID was replaced
    kept_existing: bool  # the stored copy was kept: the same bytes, policy "keep", or a sender who may not replace it


# -- storing ---------------------------------------------------------------------------------


def _same_bytes(instance: Instance, raw: bytes) -> bool:
    if instance.file_size != len(raw):
        return False
    try:
        return instance_path(instance).read_bytes() == raw
    except OSError:
        return False


def _resend_outcome(existing: Instance, r: InstanceRecord, raw: bytes, sender: Sender) -> str:
    """What a copy of a stored SOP Instance does: "same" (identical bytes), "keep" or "replace"."""
    if existing.series.series_instance_uid != r.series_instance_uid:
        raise StoreRefused(f"SOP Instance {r.sop_instance_uid} is stored in another series "
                           f"({existing.series.series_instance_uid}); an instance never changes series",
                           r.sop_instance_uid)
    if _same_bytes(existing, raw):
        return "same"
    if settings.CONFIG.duplicate_policy == "keep":
        return "keep"
    if not (sender.may_correct or (existing.source_ae, existing.source_host) == (sender.name, sender.host)):
        log.warning("%s from %s (%s): a different copy of an instance first stored by %s (%s) was not kept; "
                    "only the first sender or a peer trusted for corrections may replace it",
                    r.sop_instance_uid, sender.name, sender.host, existing.source_ae, existing.source_host)
        return "keep"
    reasons = [reason for _, reason in instance_replacing.send(sender=Instance, instance=existing) if reason]
    if reasons:
        raise StoreRefused(f"SOP Instance {r.sop_instance_uid} {' and '.join(reasons)}: a different copy is "
                           f"refused (delete the stored one first to store another)", r.sop_instance_uid)
    return "replace"


def _stored_copy(sop_instance_uid: str) -> Instance | None:
    """The stored instance with this UID, rejected or not. Nearly every C-STORE brings a new
    UID: the lookup is one prepared statement (the ORM spent a millisecond building it)."""
    with connection.cursor() as cursor:
        cursor.execute(_LOOKUP_SQL, [sop_instance_uid])
        row = cursor.fetchone()
    return None if row is None else Instance.every.select_related("series").get(pk=row[0])


_instance_rows = PreparedInsert(Instance)
_LOOKUP_SQL = (f"SELECT {Instance._meta.pk.column} FROM {Instance._meta.db_table} "
               f"WHERE {Instance._meta.get_field('sop_instance_uid').column} = %s")


def _index(record: InstanceRecord, file_key: str, file_size: int, sender: Sender, raw: bytes, sha256: str
           ) -> tuple[Instance, str | None, str]:
    """Write the index rows for ``record``; returns the instance, the file key it replaced and
    the outcome ("created", "replace", "same" or "keep": the last two index nothing)."""
    r = record
    existing = _stored_copy(r.sop_instance_uid)
    if existing is not None and existing.rejected_for:
        raise StoreRefused(f"SOP Instance {r.sop_instance_uid} was rejected (code {existing.rejected_for}, rejection "
                           f"note {existing.rejected_by}); it is not stored again", r.sop_instance_uid)
    outcome = "created" if existing is None else _resend_outcome(existing, r, raw, sender)
    if outcome in ("same", "keep"):
        return existing, None, outcome
    fields = {
        "series_id": series_id_for(r, sender),
        "sop_class_uid": r.sop_class_uid,
        "instance_number": r.instance_number,
        "number_of_frames": r.number_of_frames,
        "rows": r.rows,
        "columns": r.columns,
        "photometric_interpretation": r.photometric_interpretation,
        "transfer_syntax_uid": r.transfer_syntax_uid,
        "content_date": r.content_date,
        "content_time": r.content_time,
        "file_key": file_key,
        "file_size": file_size,
        "sha256": sha256,
        "source_ae": sender.name[:64],
        "source_host": sender.host[:255],
    }
    if existing is None:
        return _instance_rows.create(sop_instance_uid=r.sop_instance_uid, **fields), None, outcome
    old_key = existing.file_key
    for name, value in fields.items():
        setattr(existing, name, value)
    existing.save()
    return existing, old_key, outcome


_writer: ThreadPoolExecutor | None = None
_writer_lock = threading.Lock()


def _file_writer() -> ThreadPoolExecutor:
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sonoloop-fsync")
        return _writer


def _discard(written: Future, key: str) -> None:
    try:
        written.result()
    except Exception:
        pass
    filestore().delete(key)


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()  # releases the GIL: runs beside the parsing and the fsync


# How long a store may hold the index's write lock waiting for its own file. Past it the rows
# are rolled back and written again once the file is durable: a large loop, or a disk busy
# with other associations' loops, never keeps the lock (and every other writer: stores,
# job claims, heartbeats) waiting on the disk.
FILE_WAIT_IN_TRANSACTION_SECONDS = 0.05


class _FileNotYetDurable(Exception):
    pass


def _index_when_durable(record: InstanceRecord, key: str, raw: bytes, sender: Sender, written: Future,
                        derived: bool = False, digest: Future | None = None):
    # The rows are written while the file's fsync runs, and the transaction commits only once
    # the file is durable: a committed row never names a file a crash could lose, and a file
    # that cannot be written rolls its rows back. For a single frame the rest of that fsync is
    # about a millisecond; a file that takes longer lets go of the lock (above).
    sha256 = digest.result() if digest is not None else _sha256(raw)
    overlap, raced = True, False
    while True:
        try:
            if not overlap:
                written.result()
            with transaction.atomic():
                indexed = _index(record, key, len(raw), sender, raw, sha256)
                if indexed[2] in ("created", "replace"):
                    # receivers (the analysis job) commit or roll back with the index row
                    instance_indexed.send(sender=Instance, instance=indexed[0], created=indexed[1] is None,
                                          derived=derived)
                if overlap:
                    try:
                        written.result(timeout=FILE_WAIT_IN_TRANSACTION_SECONDS)
                    except FutureTimeout:
                        raise _FileNotYetDurable from None
            return indexed
        except _FileNotYetDurable:
            overlap = False
        except IntegrityError:
            # Two associations raced on the same new UID (the other won: this copy is now a
            # re-send), or a cached parent was deleted meanwhile: retry once without the cache.
            if raced:
                raise
            raced = True
            forget_cached_parents()


def index_stored_file(record: InstanceRecord, key: str, raw: bytes, sender: Sender):
    """Index a file already durable in the file store under ``key`` (the integrity check's
    repair of a row lost between fsync and commit)."""
    done: Future = Future()
    done.set_result(None)
    return _index_when_durable(record, key, raw, sender, done)


class QuotaExceeded(StorageFull):
    status = 0xA700  # Refused: out of resources


def _check_room(size: int) -> None:
    """Refuse an instance before it fills the disk or passes the storage quota."""
    config = settings.CONFIG
    if config.min_free_mb:
        free = shutil.disk_usage(filestore().root).free
        if free - size < config.min_free_mb * 1024 * 1024:
            raise StorageFull(errno.ENOSPC, f"the disk would keep less than SONOLOOP_MIN_FREE_MB={config.min_free_mb} "
                                            f"MB free ({free // 2**20} MB free, the instance is {size // 2**20} MB)")
    if config.storage_quota_mb:
        used = Instance.every.aggregate(total=Sum("file_size"))["total"] or 0
        if used + size > config.storage_quota_mb * 1024 * 1024:
            raise QuotaExceeded(errno.EDQUOT, f"the storage quota SONOLOOP_STORAGE_QUOTA_MB={config.storage_quota_mb} "
                                              f"MB would be exceeded ({used // 2**20} MB stored)")


def instance_store(raw: bytes, *, sender: Sender = Sender(), expected: tuple[str, str] | None = None,
                   derived: bool = False, study_uid: str | None = None, sha256: str | None = None) -> StoreResult:
    """Validate, durably write and index one DICOM instance (a complete DICOM file).

    The file is written under a new server-generated key (temporary name, fsync, rename,
    directory fsync) while the dataset is parsed and the index rows are prepared; the
    index transaction commits only after the file is durable, and a broken copy raises
    :class:`InvalidInstance` with the new file removed and nothing indexed.

    What is stored keeps its owner: an instance naming a known study under another patient
    (or a known series under another study) raises :class:`StoreRefused`. Details already
    stored (names, dates, descriptions) change only for a ``sender`` trusted for corrections.
    A copy of a stored SOP Instance with the same bytes changes nothing; a different copy
    replaces the stored one only under ``SONOLOOP_DUPLICATE_POLICY=replace`` (the default),
    from the instance's first sender (same name and host) or a sender trusted for
    corrections, and never when the instance has AI results or annotations (refused).
    Otherwise the first copy is kept. ``derived``: an object Sonoloop made itself (its SEG,
    SR), which receivers of ``instance_indexed`` need not analyse. ``study_uid``: the study
    the request named (STOW-RS to /studies/{study}); an instance of another study is refused.
    ``sha256``: the bytes' digest when the caller has it (the DICOM node hashes as they arrive).
    """
    _check_room(len(raw))
    key = new_key()
    written = _file_writer().submit(filestore().put, raw, key)
    digest: Future = Future()
    if sha256:
        digest.set_result(sha256)
    else:
        digest = _file_writer().submit(_sha256, raw)  # for storage commitment, while the file is written
    try:
        dataset, record = read_instance(raw, expected, settings.CONFIG.max_decoded_mb * 1024 * 1024)
        if study_uid and record.study_instance_uid != study_uid:
            raise InvalidInstance(f"the instance belongs to study {record.study_instance_uid}, not to {study_uid} "
                                  f"named by the request", status.DATASET_DOES_NOT_MATCH, record.sop_instance_uid)
        if record.sop_class_uid == KEY_OBJECT_SELECTION:
            from .rejection import rejection_apply  # it deletes through removal, which imports this module

            rejection_apply(dataset, sender)  # a refused rejection refuses the note: nothing changes
        instance, old_key, outcome = _index_when_durable(record, key, raw, sender, written, derived, digest)
    except BaseException:
        _discard(written, key)
        raise
    if outcome in ("same", "keep"):
        _discard(written, key)
    elif old_key and old_key != key:
        filestore().delete(old_key)
        previews.forget(old_key)
    return StoreResult(instance, created=outcome == "created", replaced=outcome == "replace",
                       kept_existing=outcome in ("same", "keep"))
