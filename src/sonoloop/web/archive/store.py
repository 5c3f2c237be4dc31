"""Storing instances: the file first (fsync), then the index in one transaction, with the
ownership rules (a study, series or instance never changes owner because of what another
device sends) and the re-send policy; deleting."""

from __future__ import annotations

import errno
import hashlib
import shutil
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum

from sonoloop.dicom import status
from sonoloop.dicom.attributes import INDEXED
from sonoloop.dicom.filestore import FileStore, StorageFull, new_key
from sonoloop.dicom.instance import InstanceRecord, InvalidInstance, read_instance
from sonoloop.dicom.rejection import KEY_OBJECT_SELECTION

from . import previews
from .models import Instance, Patient, Series, Study
from .signals import instance_indexed, instance_replacing

log = logging.getLogger("sonoloop.archive")


@lru_cache(maxsize=1)
def filestore() -> FileStore:
    config = settings.CONFIG
    return FileStore(config.objects_dir, config.tmp_dir)


def instance_path(instance: Instance) -> Path:
    return filestore().path(instance.file_key)


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: what the index records and what the re-send policy asks."""

    name: str = ""  # the calling AE title, "stow:<user>", "web:<user>", or Sonoloop's own AE title
    host: str = ""  # the sender's network address
    may_correct: bool = False  # a peer trusted for corrections, an admin's upload, Sonoloop itself


def admin_sender(channel: str, username: str, address: str) -> Sender:
    """STOW-RS and uploads need the admin role: trusted for corrections, like such a peer."""
    return Sender(f"{channel}:{username}"[:64], address, may_correct=True)


class StoreRefused(InvalidInstance):
    """A well-formed instance that would change what is already stored under another owner:
    a study or series of another patient, an instance of another series, or a replacement
    of an instance that has AI results or annotations. C-STORE answers 0x0124, HTTP 409."""

    def __init__(self, message: str, sop_instance_uid: str):
        super().__init__(message, status.NOT_AUTHORIZED, sop_instance_uid)


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    created: bool
    replaced: bool  # an earlier copy with the same SOP Instance UID was replaced
    kept_existing: bool  # the stored copy was kept: the same bytes, policy "keep", or a sender who may not replace it


# -- storing ---------------------------------------------------------------------------------


def _fill_in(obj, values: dict, sender: Sender, r: InstanceRecord) -> None:
    """Fill blank details; change stored ones only for a sender trusted for corrections."""
    changed, kept = [], []
    for name, value in values.items():
        current = getattr(obj, name)
        if value in ("", None) or current == value:
            continue
        if current in ("", None) or sender.may_correct:
            setattr(obj, name, value)
            changed.append(name)
        else:
            kept.append(name)
    if kept:  # the names of the fields only: their values are patient data
        log.warning("%s from %s (%s): %s of %s %s kept as stored; the sender is not trusted for corrections",
                    r.sop_instance_uid, sender.name, sender.host, ", ".join(kept), type(obj).__name__, obj.pk)
    if changed:
        obj.save(update_fields=changed + (["updated_at"] if hasattr(obj, "updated_at") else []))


# Series UID → (the patient/study/series values last indexed, series pk). A cine batch sends
# hundreds of instances of one series; their parents are checked and written once, not per instance.
_series_cache: dict[str, tuple[tuple, int]] = {}
_series_cache_lock = threading.Lock()
_SERIES_CACHE_SIZE = 4096


# what an instance says of its patient, study and series (dicom.attributes; ModalitiesInStudy
# is the archive's own, kept up to date from the series)
_PARENT_FIELDS = tuple(a.field for a in INDEXED if a.level != "IMAGE" and a.field != "modalities")


def _parents_signature(r: InstanceRecord) -> tuple:
    return tuple(getattr(r, name) for name in _PARENT_FIELDS)


def forget_cached_parents() -> None:
    with _series_cache_lock:
        _series_cache.clear()


def _series_id(r: InstanceRecord, sender: Sender) -> int:
    signature = _parents_signature(r)
    with _series_cache_lock:
        hit = _series_cache.get(r.series_instance_uid)
    if hit is not None and hit[0] == signature:
        return hit[1]
    series = _checked_parents(r, sender)
    with _series_cache_lock:
        if len(_series_cache) >= _SERIES_CACHE_SIZE:
            _series_cache.clear()
        _series_cache[r.series_instance_uid] = (signature, series.pk)
    return series.pk


def same_patient(patient: Patient, r: InstanceRecord) -> bool:
    """The instance names this patient: the same Patient ID, and the same issuer where both say one."""
    issuers = {patient.issuer_of_patient_id, r.issuer_of_patient_id} - {""}
    return patient.patient_id == r.patient_id and len(issuers) <= 1


def _patient_for(r: InstanceRecord) -> Patient:
    """The patient of a new study: by Patient ID and issuer; a blank ID is never merged."""
    if r.patient_id:
        found = Patient.objects.filter(patient_id=r.patient_id, issuer_of_patient_id=r.issuer_of_patient_id).first()
        if found is not None:
            return found
    return Patient.objects.create(patient_id=r.patient_id, issuer_of_patient_id=r.issuer_of_patient_id)


def _checked_parents(r: InstanceRecord, sender: Sender) -> Series:
    study = Study.objects.select_related("patient").filter(study_instance_uid=r.study_instance_uid).first()
    if study is not None and not same_patient(study.patient, r):
        raise StoreRefused(
            f"study {r.study_instance_uid} belongs to another patient (Patient ID {study.patient.patient_id!r}) "
            f"than this instance names ({r.patient_id!r}); a study never changes patient", r.sop_instance_uid)
    patient = study.patient if study is not None else _patient_for(r)
    _fill_in(patient, {"patient_name": r.patient_name, "patient_birth_date": r.patient_birth_date,
                       "patient_sex": r.patient_sex}, sender, r)
    details = {
        "study_date": r.study_date, "study_time": r.study_time, "study_id": r.study_id,
        "accession_number": r.accession_number, "study_description": r.study_description,
        "referring_physician_name": r.referring_physician_name,
    }
    if study is None:
        study = Study.objects.create(study_instance_uid=r.study_instance_uid, patient=patient, **details)
    else:
        _fill_in(study, details, sender, r)
    if r.modality and r.modality not in study.modalities.split("\\"):
        study.modalities = "\\".join(sorted(filter(None, study.modalities.split("\\") + [r.modality])))
        study.save(update_fields=["modalities", "updated_at"])
    details = {
        "modality": r.modality, "series_number": r.series_number, "series_description": r.series_description,
        "series_date": r.series_date, "body_part_examined": r.body_part_examined,
    }
    series = Series.objects.filter(series_instance_uid=r.series_instance_uid).first()
    if series is None:
        return Series.objects.create(series_instance_uid=r.series_instance_uid, study=study, **details)
    if series.study_id != study.pk:
        raise StoreRefused(f"series {r.series_instance_uid} belongs to another study than this instance names "
                           f"({r.study_instance_uid}); a series never changes study", r.sop_instance_uid)
    _fill_in(series, details, sender, r)
    return series


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


def _index(record: InstanceRecord, file_key: str, file_size: int, sender: Sender, raw: bytes
           ) -> tuple[Instance, str | None, str]:
    """Write the index rows for ``record``; returns the instance, the file key it replaced and
    the outcome ("created", "replace", "same" or "keep": the last two index nothing)."""
    r = record
    existing = Instance.every.select_related("series").filter(sop_instance_uid=r.sop_instance_uid).first()
    if existing is not None and existing.rejected_for:
        raise StoreRefused(f"SOP Instance {r.sop_instance_uid} was rejected (code {existing.rejected_for}, rejection "
                           f"note {existing.rejected_by}); it is not stored again", r.sop_instance_uid)
    outcome = "created" if existing is None else _resend_outcome(existing, r, raw, sender)
    if outcome in ("same", "keep"):
        return existing, None, outcome
    fields = {
        "series_id": _series_id(r, sender),
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
        "sha256": hashlib.sha256(raw).hexdigest(),
        "source_ae": sender.name[:64],
        "source_host": sender.host[:255],
    }
    if existing is None:
        return Instance.objects.create(sop_instance_uid=r.sop_instance_uid, **fields), None, outcome
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


def _index_when_durable(record: InstanceRecord, key: str, raw: bytes, sender: Sender, written: Future,
                        derived: bool = False):
    # The file is durable before the index row commits, and the database's write lock is not
    # held while the file's fsync runs (other associations commit meanwhile).
    written.result()
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                indexed = _index(record, key, len(raw), sender, raw)
                if indexed[2] in ("created", "replace"):
                    # receivers (the analysis job) commit or roll back with the index row
                    instance_indexed.send(sender=Instance, instance=indexed[0], created=indexed[1] is None,
                                          derived=derived)
            return indexed
        except IntegrityError:
            # Two associations raced on the same new UID (the other won: this copy is now a
            # re-send), or a cached parent was deleted meanwhile: retry once without the cache.
            if attempt == 2:
                raise
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
                   derived: bool = False, study_uid: str | None = None) -> StoreResult:
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
    """
    _check_room(len(raw))
    key = new_key()
    written = _file_writer().submit(filestore().put, raw, key)
    try:
        dataset, record = read_instance(raw, expected, settings.CONFIG.max_decoded_mb * 1024 * 1024)
        if study_uid and record.study_instance_uid != study_uid:
            raise InvalidInstance(f"the instance belongs to study {record.study_instance_uid}, not to {study_uid} "
                                  f"named by the request", status.DATASET_DOES_NOT_MATCH, record.sop_instance_uid)
        if record.sop_class_uid == KEY_OBJECT_SELECTION:
            from .rejection import rejection_apply  # it deletes through removal, which imports this module

            rejection_apply(dataset, sender)  # a refused rejection refuses the note: nothing changes
        instance, old_key, outcome = _index_when_durable(record, key, raw, sender, written, derived)
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
