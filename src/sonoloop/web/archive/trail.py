"""What the archive writes to the access trail: stores, queries, retrievals, reads, deletions.

One event per study and request (or association), not per instance: a cine batch or a viewer
fetching frames is one row per study, with the number of instances.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sonoloop.dicom.query import Query
from sonoloop.web.audit.services import ACCESSED, DELETED, QUERY, TRANSFERRED, Actor, audit_record

from .models import Instance, Patient, Study


def count_by_study(instances: Iterable[Instance]) -> Counter:
    counts: Counter = Counter()
    for instance in instances:
        study = instance.series.study
        counts[(study.patient.patient_id, study.study_instance_uid)] += 1
    return counts


def record_transfer(actor: Actor, instances: Iterable[Instance], action: str, how: str) -> None:
    """Instances received (action C) or sent (R) in one association or request."""
    for (patient_id, study_uid), count in count_by_study(instances).items():
        audit_record(TRANSFERRED, action, actor, patient_id=patient_id, study_instance_uid=study_uid,
                     instances=count, detail=how)


def record_query(actor: Actor, query: Query, how: str) -> None:
    keys = "; ".join(f"{m.keyword}={m.value or '|'.join(m.values) or f'{m.low}-{m.high}'}" for m in query.matches)
    patient_id = next((m.value for m in query.matches if m.keyword == "PatientID" and m.kind == "single"), "")
    study = next((m.value for m in query.matches if m.keyword == "StudyInstanceUID" and m.kind == "single"), "")
    audit_record(QUERY, "E", actor, patient_id=patient_id, study_instance_uid=study,
                 detail=f"{how} {query.level}: {keys or '(all)'}")


def record_read(actor: Actor, study: Study, how: str, patient: Patient | None = None) -> None:
    """A person looked at a study's images or data, or a patient's (once a minute per person
    and study: a viewer fetching a cine frame by frame is one row)."""
    patient = patient or study.patient
    audit_record(ACCESSED, "R", actor, patient_id=patient.patient_id,
                 study_instance_uid=study.study_instance_uid if study else "", detail=how, once_a_minute=True)


def record_deleted(actor: Actor, patient_id: str, study_uid: str, instances: int, how: str) -> None:
    audit_record(DELETED, "D", actor, patient_id=patient_id, study_instance_uid=study_uid, instances=instances,
                 detail=how)
