"""Archive services: storing instances, querying the index, managing DICOM peers.

Views, management commands and the DICOM node call these; they hold the rules.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet

from sonoloop.config import check_ae_title, ConfigError
from sonoloop.dicom.filestore import FileStore, StorageFull, new_key  # noqa: F401 - re-exported for views
from sonoloop.dicom import status
from sonoloop.dicom.instance import InstanceRecord, InvalidInstance, read_instance, sop_class_name
from sonoloop.dicom.archive import Destination, Permissions
from sonoloop.dicom.query import LEVELS, Match, Query

from . import lookups, previews  # noqa: F401 - lookups registers the wildcard lookups
from .models import DicomPeer, Instance, Patient, Series, Study
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


def _parents_signature(r: InstanceRecord) -> tuple:
    return (
        r.patient_id, r.issuer_of_patient_id, r.patient_name, r.patient_birth_date, r.patient_sex,
        r.study_instance_uid, r.study_date, r.study_time, r.study_id, r.accession_number, r.study_description,
        r.referring_physician_name, r.series_instance_uid, r.modality, r.series_number, r.series_description,
        r.series_date, r.body_part_examined,
    )


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
    existing = Instance.objects.select_related("series").filter(sop_instance_uid=r.sop_instance_uid).first()
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
    key = new_key()
    written = _file_writer().submit(filestore().put, raw, key)
    try:
        _, record = read_instance(raw, expected, settings.CONFIG.max_decoded_mb * 1024 * 1024)
        if study_uid and record.study_instance_uid != study_uid:
            raise InvalidInstance(f"the instance belongs to study {record.study_instance_uid}, not to {study_uid} "
                                  f"named by the request", status.DATASET_DOES_NOT_MATCH, record.sop_instance_uid)
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


def instance_delete(instance: Instance) -> None:
    """Remove an instance from the index, then its file; prune empty series/studies/patients."""
    key = instance.file_key
    series = instance.series
    with transaction.atomic():
        instance.delete()
        if not series.instances.exists():
            study = series.study
            series.delete()
            if not study.series.exists():
                patient = study.patient
                study.delete()
                if not patient.studies.exists():
                    patient.delete()
    forget_cached_parents()
    filestore().delete(key)


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
    keys = dict(Instance.objects.values_list("file_key", "sop_instance_uid"))
    missing = [uid for key, uid in keys.items() if not store.path(key).exists()]
    report = ArchiveCheck(len(keys), missing, [])
    now = time.time()
    for path in sorted(store.root.glob("*/*" + store.suffix)):
        key = path.name[: -len(store.suffix)]
        if key in keys or now - path.stat().st_mtime < min_age_seconds:
            continue
        report.orphan_keys.append(key)
        if repair and not Instance.objects.filter(file_key=key).exists():
            _repair_orphan(key, path, report)
    return report


def _repair_orphan(key: str, path: Path, report: ArchiveCheck) -> None:
    raw = path.read_bytes()
    try:
        _, record = read_instance(raw)
        if Instance.objects.filter(sop_instance_uid=record.sop_instance_uid).exists():
            raise InvalidInstance("another copy of this SOP Instance is indexed", status.CANNOT_UNDERSTAND)
        done: Future = Future()
        done.set_result(None)
        _index_when_durable(record, key, raw, Sender("archive_check", may_correct=False), done)
        report.reindexed.append(key)
        log.warning("archive_check: indexed %s again from its file %s", record.sop_instance_uid, key)
    except InvalidInstance as exc:
        quarantine = settings.CONFIG.data_dir / "quarantine"
        quarantine.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, quarantine / path.name)
        report.quarantined.append(key)
        log.warning("archive_check: moved %s to %s: %s", key, quarantine, exc)


# -- querying (C-FIND, C-GET, C-MOVE, QIDO) ----------------------------------------------------

FIELDS = {
    "PATIENT": {
        "PatientID": "patient_id",
        "PatientName": "patient_name",
        "PatientBirthDate": "patient_birth_date",
        "PatientSex": "patient_sex",
    },
    "STUDY": {
        "StudyInstanceUID": "study_instance_uid",
        "StudyDate": "study_date",
        "StudyTime": "study_time",
        "StudyID": "study_id",
        "AccessionNumber": "accession_number",
        "StudyDescription": "study_description",
        "ReferringPhysicianName": "referring_physician_name",
        "ModalitiesInStudy": "modalities",
    },
    "SERIES": {
        "SeriesInstanceUID": "series_instance_uid",
        "Modality": "modality",
        "SeriesNumber": "series_number",
        "SeriesDescription": "series_description",
        "SeriesDate": "series_date",
        "BodyPartExamined": "body_part_examined",
    },
    "IMAGE": {
        "SOPInstanceUID": "sop_instance_uid",
        "SOPClassUID": "sop_class_uid",
        "InstanceNumber": "instance_number",
        "NumberOfFrames": "number_of_frames",
        "ContentDate": "content_date",
        "ContentTime": "content_time",
        "Rows": "rows",
        "Columns": "columns",
    },
}
MODELS = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
_PARENT_PATH = {"STUDY": "patient", "SERIES": "study", "IMAGE": "series"}
_INT_FIELDS = {"series_number", "instance_number", "number_of_frames", "rows", "columns"}
_CASE_INSENSITIVE = {"patient_name", "referring_physician_name"}


def _path_to(base: str, target: str) -> str:
    """ORM path from the ``base`` level's model up to ``target``'s (empty if the same)."""
    parts = []
    level = base
    while level != target:
        parts.append(_PARENT_PATH[level])
        level = LEVELS[LEVELS.index(level) - 1]
    return "__".join(parts)


def _level_of(keyword: str) -> str | None:
    return next((level for level, fields in FIELDS.items() if keyword in fields), None)


def _condition(match: Match, lookup: str, field: str) -> Q:
    if field in _INT_FIELDS:
        try:
            if match.kind == "list":
                return Q(**{f"{lookup}__in": [int(v) for v in match.values]})
            return Q(**{lookup: int(match.value)})
        except ValueError:
            return Q(pk__in=[])
    if match.kind == "single":
        if field == "modalities":
            return Q(**{f"{lookup}__regex": rf"(^|\\){re.escape(match.value)}(\\|$)"})
        if field in _CASE_INSENSITIVE:
            return Q(**{f"{lookup}__iexact": match.value})
        return Q(**{lookup: match.value})
    if match.kind == "wildcard":
        suffix = "__dicom_iwildcard" if field in _CASE_INSENSITIVE else "__dicom_wildcard"
        return Q(**{f"{lookup}{suffix}": match.value})
    if match.kind == "list":
        return Q(**{f"{lookup}__in": list(match.values)})
    condition = Q()
    if match.low:
        condition &= Q(**{f"{lookup}__gte": match.low})
    if match.high:
        # "-20240131" includes the whole of that day/time prefix.
        condition &= Q(**{f"{lookup}__lte": match.high + "\uffff"})
    return condition & ~Q(**{lookup: ""})


def apply_matches(qs: QuerySet, base: str, matches: list[Match]) -> QuerySet:
    for match in matches:
        level = _level_of(match.keyword)
        if level is None or LEVELS.index(level) > LEVELS.index(base):
            continue
        field = FIELDS[level][match.keyword]
        path = _path_to(base, level)
        lookup = f"{path}__{field}" if path else field
        qs = qs.filter(_condition(match, lookup, field))
    return qs


def _counted(qs: QuerySet, level: str) -> QuerySet:
    if level == "PATIENT":
        return qs.annotate(
            n_studies=Count("studies", distinct=True),
            n_series=Count("studies__series", distinct=True),
            n_instances=Count("studies__series__instances", distinct=True),
        )
    if level == "STUDY":
        return qs.annotate(n_series=Count("series", distinct=True), n_instances=Count("series__instances", distinct=True))
    if level == "SERIES":
        return qs.annotate(n_instances=Count("instances", distinct=True))
    return qs


_COUNT_KEYWORDS = {
    "PATIENT": {
        "n_studies": "NumberOfPatientRelatedStudies",
        "n_series": "NumberOfPatientRelatedSeries",
        "n_instances": "NumberOfPatientRelatedInstances",
    },
    "STUDY": {"n_series": "NumberOfStudyRelatedSeries", "n_instances": "NumberOfStudyRelatedInstances"},
    "SERIES": {"n_instances": "NumberOfSeriesRelatedInstances"},
    "IMAGE": {},
}

_SELECT_RELATED = {
    "PATIENT": (),
    "STUDY": ("patient",),
    "SERIES": ("study__patient",),
    "IMAGE": ("series__study__patient",),
}


def query_records(query: Query, limit: int | None = None, offset: int = 0):
    """Yield one dict per matching entity at the query's level: DICOM keyword → value."""
    level = query.level
    qs = MODELS[level].objects.select_related(*_SELECT_RELATED[level])
    qs = apply_matches(qs, level, query.matches)
    qs = _counted(qs, level).order_by("pk")
    if limit is not None:
        qs = qs[offset: offset + limit]
    for obj in qs.iterator(chunk_size=500) if limit is None else qs:
        record = {}
        current, current_level = obj, level
        while True:
            for keyword, field in FIELDS[current_level].items():
                record[keyword] = getattr(current, field)
            if current_level == "PATIENT":
                break
            current = getattr(current, _PARENT_PATH[current_level])
            current_level = LEVELS[LEVELS.index(current_level) - 1]
        for attr, keyword in _COUNT_KEYWORDS[level].items():
            record[keyword] = getattr(obj, attr)
        if level == "IMAGE":
            record["AvailableTransferSyntaxUID"] = obj.transfer_syntax_uid
        record["RetrieveAETitle"] = settings.CONFIG.ae_title
        record["_pk"] = obj.pk
        yield record


def instances_for(query: Query) -> QuerySet:
    """Every instance at or below the entities the query names (C-GET, C-MOVE)."""
    return apply_matches(Instance.objects.all(), "IMAGE", query.matches).order_by("pk")


# -- peers -----------------------------------------------------------------------------------


class PeerError(ValueError):
    pass


def peer_add(ae_title: str, host: str, port: int, *, may_store: bool, may_query: bool,
             is_move_destination: bool, receives_results: bool = False, may_correct: bool = False,
             description: str = "", use_tls: bool = False, tls_identity: str = "") -> DicomPeer:
    try:
        ae_title = check_ae_title(ae_title, "The peer's AE title")
    except ConfigError as exc:
        raise PeerError(str(exc)) from None
    if not (1 <= int(port) <= 65535):
        raise PeerError(f"port {port} is not between 1 and 65535")
    if not host.strip():
        raise PeerError("the peer's host must not be empty")
    peer, _ = DicomPeer.objects.update_or_create(
        ae_title=ae_title,
        defaults={
            "host": host.strip(),
            "port": int(port),
            "may_store": may_store,
            "may_query": may_query,
            "is_move_destination": is_move_destination,
            "receives_results": receives_results,
            "may_correct": may_correct,
            "description": description,
            "use_tls": use_tls,
            "tls_identity": tls_identity.strip(),
        },
    )
    return peer


def peer_remove(ae_title: str) -> None:
    deleted, _ = DicomPeer.objects.filter(ae_title=ae_title.strip()).delete()
    if not deleted:
        raise PeerError(f"there is no peer with AE title {ae_title!r}")


def peer_permissions(calling_ae: str, address: str, certificate_names: frozenset[str] | None = None
                     ) -> Permissions:
    """Who may do what over DICOM (the README's "Who may talk to the node").

    An AE title is a name anyone can claim, so what exposes or changes stored data also
    needs the peer's registered host: query and retrieve, and corrections. An unknown AE may
    C-ECHO, and C-STORE only on an open node (``SONOLOOP_DICOM_OPEN_STORE``). In strict mode
    (``SONOLOOP_DICOM_STRICT``) an unknown AE may do nothing, and a known one only from its host.

    ``certificate_names``: the names in the client certificate verified on this connection
    (client certificates required: ``SONOLOOP_DICOM_TLS_CA``). Any certificate from that CA
    would otherwise do for any AE title: a known peer's certificate must carry its
    ``tls_identity``, or else its AE title or host; one that does not gets nothing.
    """
    peer = DicomPeer.objects.filter(ae_title=calling_ae.strip()).first()
    config = settings.CONFIG
    if peer is None:
        if config.strict_peers:
            return Permissions(echo=False, store=False, query=False)
        return Permissions(echo=True, store=config.open_store, query=False)
    if certificate_names is not None:
        expected = {peer.tls_identity} if peer.tls_identity else {peer.ae_title, peer.host}
        if not expected & set(certificate_names):
            log.warning("association from %s at %s: its certificate (%s) is not the one of peer %s (%s)",
                        calling_ae, address, ", ".join(sorted(certificate_names)) or "no names",
                        peer.ae_title, " or ".join(sorted(expected)))
            return Permissions(echo=False, store=False, query=False)
    at_home = _host_matches(peer.host, address)
    if config.strict_peers and not at_home:
        return Permissions(echo=False, store=False, query=False)
    return Permissions(echo=True, store=peer.may_store, query=peer.may_query and at_home,
                       correct=peer.may_correct and at_home)


def _host_matches(host: str, address: str) -> bool:
    import socket

    if host == address:
        return True
    try:
        return address in {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False


def move_destination(ae_title: str) -> Destination | None:
    peer = DicomPeer.objects.filter(ae_title=ae_title, is_move_destination=True).first()
    return Destination(peer.ae_title, peer.host, peer.port, tls=peer.use_tls) if peer else None


# -- presenting ----------------------------------------------------------------------------------

_SHOWN_ATTRIBUTES = (
    "Manufacturer", "ManufacturerModelName", "InstitutionName", "StationName", "OperatorsName",
    "ImageType", "SOPClassUID", "TransferSyntaxUID", "PhotometricInterpretation", "Rows", "Columns",
    "NumberOfFrames", "FrameTime", "CineRate", "RecommendedDisplayFrameRate", "HeartRate",
    "BitsAllocated", "BitsStored", "SamplesPerPixel", "LossyImageCompression",
)


def instance_attributes(instance: Instance) -> list[tuple[str, str]]:
    """The key DICOM attributes a person checks, read from the stored file."""
    from pydicom import dcmread

    try:
        ds = dcmread(instance_path(instance), stop_before_pixels=True)
    except Exception as exc:
        return [("Error", f"the stored file cannot be read: {exc}")]
    rows = []
    for keyword in _SHOWN_ATTRIBUTES:
        if keyword == "TransferSyntaxUID":
            value = ds.file_meta.get("TransferSyntaxUID")
            rows.append(("Transfer Syntax", f"{value.name} ({value})" if value else ""))
            continue
        if keyword in ds and ds.get(keyword) not in (None, ""):
            value = ds.get(keyword)
            text = sop_class_name(str(value)) if keyword == "SOPClassUID" else str(value)
            rows.append((ds[keyword].name, text))
    rows.append(("Ultrasound calibration", "present" if "SequenceOfUltrasoundRegions" in ds else "absent"))
    return rows


def dataset_store(dataset) -> StoreResult:
    """Store a dataset this installation made (its SEG, SR, an exported annotation): written in
    the DICOM file format, stored as from this node's own AE (trusted to replace what it made
    itself: a repeated write under the same UIDs replaces), and marked derived so it makes
    no analysis job."""
    import io

    from pydicom.filewriter import dcmwrite

    out = io.BytesIO()
    dcmwrite(out, dataset, enforce_file_format=True)
    return instance_store(out.getvalue(), sender=Sender(settings.CONFIG.ae_title, may_correct=True), derived=True)


def own_device():
    """This installation as the device that made its SEG and SR objects."""
    from sonoloop import __version__
    from sonoloop.dicom.seg import Device

    return Device("Sonoloop", "Sonoloop", settings.CONFIG.ae_title, __version__)


def own_uid(*parts: object) -> str:
    """A UID for something this installation makes, the same every time for the same ``parts``
    (e.g. the SEG of one analysis job): a repeated write replaces instead of adding a copy."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[settings.CONFIG.ae_title, str(settings.CONFIG.data_dir), *map(str, parts)])


def instance_preview_png(instance: Instance, frame: int, size: int) -> bytes:
    """PNG of one frame (1-based), from the preview cache (``archive.previews``)."""
    return previews.preview_png(instance, instance_path(instance), frame, size)


def study_summary(study: Study) -> dict:
    p = study.patient
    return {
        "study_instance_uid": study.study_instance_uid,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "accession_number": study.accession_number,
        "modalities": [m for m in study.modalities.split("\\") if m],
        "patient": {"id": p.patient_id, "name": p.patient_name, "birth_date": p.patient_birth_date, "sex": p.patient_sex},
    }


def instance_summary(instance: Instance, base_url: str) -> dict:
    series, study = instance.series, instance.series.study
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "sop_class": sop_class_name(instance.sop_class_uid),
        "number_of_frames": instance.number_of_frames,
        "rows": instance.rows,
        "columns": instance.columns,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "received_at": instance.received_at.isoformat(),
        "series": {
            "series_instance_uid": series.series_instance_uid,
            "modality": series.modality,
            "series_number": series.series_number,
            "series_description": series.series_description,
        },
        "study": study_summary(study),
        "urls": {
            "page": f"{base_url.rstrip('/')}/instances/{instance.sop_instance_uid}/",
            "wadouri": f"{base_url.rstrip('/')}/dicomweb/wado?requestType=WADO&studyUID={study.study_instance_uid}"
                       f"&seriesUID={series.series_instance_uid}&objectUID={instance.sop_instance_uid}"
                       f"&contentType=application%2Fdicom",
        },
    }
