"""Archive services: storing instances, querying the index, managing DICOM peers.

Views, management commands and the DICOM node call these; they hold the rules.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet

from sonoloop.config import check_ae_title, ConfigError
from sonoloop.dicom.filestore import FileStore, StorageFull, new_key  # noqa: F401 - re-exported for views
from sonoloop.dicom.instance import InstanceRecord, read_instance, sop_class_name
from sonoloop.dicom.pixels import render_png
from sonoloop.dicom.node import Destination, Permissions
from sonoloop.dicom.query import LEVELS, Match, Query

from .models import DicomPeer, Instance, Patient, Series, Study
from .signals import instance_indexed

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
    kept_existing: bool  # duplicate policy "keep": the new copy was discarded


# -- storing ---------------------------------------------------------------------------------


def _upsert(model, lookup: dict, values: dict):
    obj = model.objects.filter(**lookup).first()
    if obj is None:
        return model.objects.create(**lookup, **values)
    changed = [name for name, value in values.items() if value not in ("", None) and getattr(obj, name) != value]
    if changed:
        for name in changed:
            setattr(obj, name, values[name])
        obj.save(update_fields=changed + (["updated_at"] if hasattr(obj, "updated_at") else []))
    return obj


# Series UID → (the patient/study/series values last indexed, series pk). A cine batch sends
# hundreds of instances of one series; their parents are written once, not per instance.
_series_cache: dict[str, tuple[tuple, int]] = {}
_series_cache_lock = threading.Lock()
_SERIES_CACHE_SIZE = 4096


def _parents_signature(r: InstanceRecord) -> tuple:
    return (
        r.patient_id, r.patient_name, r.patient_birth_date, r.patient_sex, r.study_instance_uid, r.study_date,
        r.study_time, r.study_id, r.accession_number, r.study_description, r.referring_physician_name,
        r.series_instance_uid, r.modality, r.series_number, r.series_description, r.series_date,
        r.body_part_examined,
    )


def forget_cached_parents() -> None:
    with _series_cache_lock:
        _series_cache.clear()


def _series_id(r: InstanceRecord) -> int:
    signature = _parents_signature(r)
    with _series_cache_lock:
        hit = _series_cache.get(r.series_instance_uid)
    if hit is not None and hit[0] == signature:
        return hit[1]
    series = _upsert_parents(r)
    with _series_cache_lock:
        if len(_series_cache) >= _SERIES_CACHE_SIZE:
            _series_cache.clear()
        _series_cache[r.series_instance_uid] = (signature, series.pk)
    return series.pk


def _upsert_parents(r: InstanceRecord) -> Series:
    patient = _upsert(
        Patient,
        {"patient_id": r.patient_id},
        {"patient_name": r.patient_name, "patient_birth_date": r.patient_birth_date, "patient_sex": r.patient_sex},
    )
    study = _upsert(
        Study,
        {"study_instance_uid": r.study_instance_uid},
        {
            "patient": patient,
            "study_date": r.study_date,
            "study_time": r.study_time,
            "study_id": r.study_id,
            "accession_number": r.accession_number,
            "study_description": r.study_description,
            "referring_physician_name": r.referring_physician_name,
        },
    )
    if r.modality and r.modality not in study.modalities.split("\\"):
        study.modalities = "\\".join(sorted(filter(None, study.modalities.split("\\") + [r.modality])))
        study.save(update_fields=["modalities", "updated_at"])
    series = _upsert(
        Series,
        {"series_instance_uid": r.series_instance_uid},
        {
            "study": study,
            "modality": r.modality,
            "series_number": r.series_number,
            "series_description": r.series_description,
            "series_date": r.series_date,
            "body_part_examined": r.body_part_examined,
        },
    )
    return series


def _index(record: InstanceRecord, file_key: str, file_size: int, source_ae: str) -> tuple[Instance, str | None]:
    """Write the index rows for ``record``; returns the instance and the file key it replaced."""
    r = record
    fields = {
        "series_id": _series_id(r),
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
        "source_ae": source_ae,
    }
    existing = Instance.objects.filter(sop_instance_uid=r.sop_instance_uid).first()
    if existing is None:
        return Instance.objects.create(sop_instance_uid=r.sop_instance_uid, **fields), None
    old_key = existing.file_key
    for name, value in fields.items():
        setattr(existing, name, value)
    existing.save()
    return existing, old_key


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


def _index_when_durable(record: InstanceRecord, key: str, size: int, source_ae: str, written: Future,
                        derived: bool = False):
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                indexed = _index(record, key, size, source_ae)
                # receivers (the analysis job) commit or roll back with the index row
                instance_indexed.send(sender=Instance, instance=indexed[0], created=indexed[1] is None,
                                      derived=derived)
                written.result()  # the row commits only once the file is fsynced in place
            return indexed
        except IntegrityError:
            # Two associations raced on the same new UID (the other won: index this copy
            # over it), or a cached parent was deleted meanwhile: retry once without the cache.
            if attempt == 2:
                raise
            forget_cached_parents()


def instance_store(raw: bytes, *, source_ae: str = "", expected: tuple[str, str] | None = None,
                   derived: bool = False) -> StoreResult:
    """Validate, durably write and index one DICOM instance (a complete DICOM file).

    The file is written under a new server-generated key (temporary name, fsync, rename,
    directory fsync) while the dataset is parsed and the index rows are prepared; the
    index transaction commits only after the file is durable, and a broken copy raises
    :class:`InvalidInstance` with the new file removed and nothing indexed.  Re-sending an
    existing SOP Instance UID follows ``SONOLOOP_DUPLICATE_POLICY``: ``replace`` (the
    default) swaps the index to the new copy in one transaction and then deletes the old
    file; ``keep`` discards the new copy and keeps the first. ``derived``: an object Sonoloop
    made itself (its SEG, SR), which receivers of ``instance_indexed`` need not analyse.
    """
    key = new_key()
    written = _file_writer().submit(filestore().put, raw, key)
    try:
        _, record = read_instance(raw, expected)
        if settings.CONFIG.duplicate_policy == "keep":
            existing = Instance.objects.filter(sop_instance_uid=record.sop_instance_uid).first()
            if existing is not None:
                _discard(written, key)
                return StoreResult(existing, created=False, replaced=False, kept_existing=True)
        instance, old_key = _index_when_durable(record, key, len(raw), source_ae, written, derived)
    except BaseException:
        _discard(written, key)
        raise
    if old_key and old_key != key:
        filestore().delete(old_key)
    return StoreResult(instance, created=old_key is None, replaced=old_key is not None, kept_existing=False)


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
    removed_orphans: int = 0


def archive_check(remove_orphans: bool = False, min_age_seconds: float = 600) -> ArchiveCheck:
    """Compare the index with the files: report missing files and unindexed (orphan) files.

    Files younger than ``min_age_seconds`` are left alone: they may belong to a C-STORE in
    progress, whose file is written before its index row commits.
    """
    import time

    store = filestore()
    keys = dict(Instance.objects.values_list("file_key", "sop_instance_uid"))
    missing = [uid for key, uid in keys.items() if not store.path(key).exists()]
    orphans, removed = [], 0
    now = time.time()
    for path in sorted(store.root.glob("*/*" + store.suffix)):
        key = path.name[: -len(store.suffix)]
        if key in keys or now - path.stat().st_mtime < min_age_seconds:
            continue
        orphans.append(key)
        if remove_orphans and not Instance.objects.filter(file_key=key).exists():
            path.unlink(missing_ok=True)
            removed += 1
    return ArchiveCheck(len(keys), missing, orphans, removed)


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


def _wildcard_regex(value: str) -> str:
    return "^" + "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value) + "$"


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
        suffix = "__iregex" if field in _CASE_INSENSITIVE else "__regex"
        return Q(**{f"{lookup}{suffix}": _wildcard_regex(match.value)})
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
             is_move_destination: bool, receives_results: bool = False, description: str = "") -> DicomPeer:
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
            "description": description,
        },
    )
    return peer


def peer_remove(ae_title: str) -> None:
    deleted, _ = DicomPeer.objects.filter(ae_title=ae_title.strip()).delete()
    if not deleted:
        raise PeerError(f"there is no peer with AE title {ae_title!r}")


def peer_permissions(calling_ae: str, address: str) -> Permissions:
    """The default policy: an unknown AE may echo and store but not query or retrieve.

    In strict mode (``SONOLOOP_DICOM_STRICT``) an unknown AE may do nothing, and a known
    one only from its registered host (by IP address or a name resolving to it).
    """
    peer = DicomPeer.objects.filter(ae_title=calling_ae.strip()).first()
    strict = settings.CONFIG.strict_peers
    if peer is None:
        return Permissions(echo=not strict, store=not strict, query=False)
    if strict and not _host_matches(peer.host, address):
        return Permissions(echo=False, store=False, query=False)
    return Permissions(echo=True, store=peer.may_store, query=peer.may_query)


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
    return Destination(peer.ae_title, peer.host, peer.port) if peer else None


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


def instance_preview_png(instance: Instance, frame: int, size: int) -> bytes:
    """PNG of one frame (1-based), cached under the file's key (a replaced file gets a new key)."""
    cache = settings.CONFIG.cache_dir / "previews" / instance.file_key[:2]
    target = cache / f"{instance.file_key}-{frame}-{size}.png"
    if target.exists():
        return target.read_bytes()
    png = render_png(instance_path(instance), frame - 1, size)
    cache.mkdir(parents=True, exist_ok=True)
    temp = target.with_suffix(f".{os.getpid()}.tmp")
    temp.write_bytes(png)
    os.replace(temp, target)
    return png


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
