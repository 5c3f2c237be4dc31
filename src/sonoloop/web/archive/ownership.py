"""Who sent what, and what a sender may change: the index rows above an instance (patient,
study, series) are found, created or filled in here, and a study, series or instance never
changes owner because of what another device sends (refused with ``StoreRefused``)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from django.db import transaction

from sonoloop.dicom import status
from sonoloop.dicom.attributes import INDEXED
from sonoloop.dicom.instance import InstanceRecord, InvalidInstance

from .models import Patient, Series, Study

log = logging.getLogger("sonoloop.archive")


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


def series_id_for(r: InstanceRecord, sender: Sender) -> int:
    signature = _parents_signature(r)
    with _series_cache_lock:
        hit = _series_cache.get(r.series_instance_uid)
    if hit is not None and hit[0] == signature:
        return hit[1]
    series = _checked_parents(r, sender)

    def remember() -> None:
        with _series_cache_lock:
            if len(_series_cache) >= _SERIES_CACHE_SIZE:
                _series_cache.clear()
            _series_cache[r.series_instance_uid] = (signature, series.pk)

    # Only rows that were committed are remembered: a rolled-back series' id is given to the
    # next series SQLite creates, and a cached id would then file this series' images there.
    transaction.on_commit(remember)
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

