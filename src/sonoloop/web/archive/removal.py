"""Deleting stored images, with one meaning whatever asks: the admin page, the CLI, DICOMweb
``DELETE`` or an IOCM rejection note for expired data.

A deletion removes the instances from the index and their files from the store, together
with what was made from them: the apps above the archive take part through
:data:`instances_removing` — analysis names its SEG and SR objects and its label files,
annotations keep their records (masks, history, provenance) but mark them as referring to a
deleted image. Series, studies and patients go with their last instance. Each study deleted
from is a row in the access trail (110105, action D) with who, how and why. Files go only
after the index no longer names them; a crash in between leaves an orphan file that
``sonoloop check`` reports, never an index row without its file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.db import transaction

from sonoloop.web import errors
from sonoloop.web.audit.services import Actor

from . import previews, trail
from .models import Instance, Patient, Series, Study
from .signals import instances_removing
from .ownership import forget_cached_parents
from .store import filestore

_CHUNK = 500  # SQLite bounds the parameters of one query


class RemovalError(errors.NotFound):
    """Nothing to delete: an unknown UID, or a request that names nothing (HTTP 404)."""


@dataclass
class Removing:
    derived: set[str] = field(default_factory=set)  # SOP Instance UIDs of stored objects made from them
    files: list[Path] = field(default_factory=list)  # files to delete once the index no longer names them


@dataclass(frozen=True)
class Removed:
    instances: int  # the ones asked for
    derived: int  # SEG, SR and other objects made from them, deleted with them
    studies: tuple[str, ...]  # Study Instance UIDs deleted from
    studies_gone: int  # studies left empty and removed


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), _CHUNK):
        yield items[start: start + _CHUNK]


def with_derived(chosen: dict[int, Instance], hiding: bool = False) -> tuple[dict[int, Instance], list[Path]]:
    """``chosen`` plus every stored object made from it (repeatedly: a SEG of a SEG), and the
    files that go with them. ``hiding``: for a rejection, which keeps records and files."""
    files: list[Path] = []
    pending = list(chosen.values())
    while pending:
        derived: set[str] = set()
        for _, answer in instances_removing.send(sender=Instance, instances=pending, hiding=hiding):
            if answer:
                derived |= answer.derived
                files += answer.files
        pending = []
        for uids in _chunks(sorted(derived)):
            for instance in Instance.every.select_related("series__study__patient").filter(sop_instance_uid__in=uids):
                if instance.pk not in chosen:
                    chosen[instance.pk] = instance
                    pending.append(instance)
    return chosen, files


def _prune(series_ids: set[int]) -> int:
    """Remove series, studies and patients left without instances; returns studies removed."""
    studies_gone = 0
    for series in Series.objects.filter(pk__in=series_ids).select_related("study__patient"):
        if Instance.every.filter(series=series).exists():
            continue
        study = series.study
        series.delete()
        if not Series.objects.filter(study=study).exists():
            patient = study.patient
            study.delete()
            studies_gone += 1
            if not Study.objects.filter(patient=patient).exists():
                Patient.objects.filter(pk=patient.pk).delete()
    return studies_gone


def remove_instances(instances: Iterable[Instance], *, actor: Actor, reason: str = "") -> Removed:
    """Delete ``instances`` and what was made from them (see the module's docstring)."""
    asked = {i.pk: i for i in instances}
    if not asked:
        raise RemovalError("nothing to delete")
    with transaction.atomic():
        # locked before looking for what was made from them: an analysis recording its result
        # for one of them (``analysis.running._record``) finishes first, and its SEG and SR are
        # found below, or it finds the image gone (PostgreSQL; SQLite's IMMEDIATE transactions
        # are serial anyway)
        for pks in _chunks(sorted(asked)):
            list(Instance.every.select_for_update().filter(pk__in=pks).values_list("pk"))
        chosen, files = with_derived(dict(asked))
        keys = [i.file_key for i in chosen.values()]
        series_ids = {i.series_id for i in chosen.values()}
        by_study = trail.count_by_study(chosen.values())
        for pks in _chunks(list(chosen)):
            Instance.every.filter(pk__in=pks).delete()
        studies_gone = _prune(series_ids)
        how = f"deleted ({reason})" if reason else "deleted"
        for (patient_id, study_uid), count in by_study.items():
            trail.record_deleted(actor, patient_id, study_uid, count, how)

        def remove_files():
            forget_cached_parents()
            store = filestore()
            for key in keys:
                store.delete(key)
                previews.forget(key)
            for path in files:
                path.unlink(missing_ok=True)

        transaction.on_commit(remove_files)
    return Removed(instances=len(asked), derived=len(chosen) - len(asked),
                   studies=tuple(sorted({uid for _, uid in by_study})), studies_gone=studies_gone)


def _remove_found(what: str, filters: dict, *, actor: Actor, reason: str) -> Removed:
    found = list(Instance.every.select_related("series__study__patient").filter(**filters))
    if not found:
        raise RemovalError(f"there is no {what}")
    return remove_instances(found, actor=actor, reason=reason)


def study_remove(study_uid: str, *, actor: Actor, reason: str = "") -> Removed:
    return _remove_found(f"study {study_uid}", {"series__study__study_instance_uid": study_uid},
                         actor=actor, reason=reason)


def series_remove(series_uid: str, *, actor: Actor, reason: str = "", study_uid: str = "") -> Removed:
    """``study_uid``, when given (the DICOMweb path names it), must be the series' study."""
    filters = {"series__series_instance_uid": series_uid}
    if study_uid:
        filters["series__study__study_instance_uid"] = study_uid
    return _remove_found(f"series {series_uid}" + (f" in study {study_uid}" if study_uid else ""), filters,
                         actor=actor, reason=reason)


def instance_remove(sop_uid: str, *, actor: Actor, reason: str = "", study_uid: str = "",
                    series_uid: str = "") -> Removed:
    filters = {"sop_instance_uid": sop_uid}
    if study_uid:
        filters["series__study__study_instance_uid"] = study_uid
    if series_uid:
        filters["series__series_instance_uid"] = series_uid
    return _remove_found(f"instance {sop_uid}" + (f" in study {study_uid}" if study_uid else ""), filters,
                         actor=actor, reason=reason)
