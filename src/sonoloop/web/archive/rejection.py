"""Rejection notes received (IHE IOCM): before the note is indexed, the instances it names are
hidden (quality, patient safety, wrong worklist entry) or deleted (retention expired).

Hidden instances keep their rows and files, with the code and the note that rejected them;
queries, retrievals, pages, analysis and training leave them out, and a later copy of one
is refused. The SEG and SR the AI made from them are hidden with them. Only the device that
sent an instance (same AE title and host) or a sender trusted for corrections may reject it,
and a note rejects instances of its own study only: a device on the network cannot make
another patient's images disappear.
"""

from __future__ import annotations

import logging

from django.utils import timezone
from pydicom.dataset import Dataset

from sonoloop.dicom import status
from sonoloop.dicom.instance import InvalidInstance
from sonoloop.dicom.rejection import NotARejection, RejectionNote, rejection_note
from sonoloop.web.audit.services import ACCESSED, Actor, audit_record

from . import removal, trail
from .models import Instance
from .ownership import Sender, StoreRefused

log = logging.getLogger("sonoloop.archive")


def _referenced(note: RejectionNote, sop_uid: str) -> list[Instance]:
    """The stored instances the note names, each checked against its study, series and class."""
    named = {ref[3]: ref for ref in note.references}
    found = []
    uids = sorted(named)
    for start in range(0, len(uids), 500):
        found += Instance.every.select_related("series__study__patient").filter(
            sop_instance_uid__in=uids[start: start + 500])
    for instance in found:
        study, series, sop_class, _ = named[instance.sop_instance_uid]
        if (instance.series.study.study_instance_uid, instance.series.series_instance_uid,
                instance.sop_class_uid) != (study, series, sop_class):
            raise StoreRefused(f"rejection note {sop_uid}: instance {instance.sop_instance_uid} is stored under "
                               f"another study, series or SOP class than the note says; nothing was rejected",
                               sop_uid)
    missing = len(named) - len(found)
    if missing:
        log.info("rejection note %s names %d instance(s) not stored here", sop_uid, missing)
    return found


def rejection_apply(ds: Dataset, sender: Sender) -> int:
    """Carry out the rejection ``ds`` carries, if it is a rejection note; returns how many
    stored instances it hid or deleted (0 for any other object)."""
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    try:
        note = rejection_note(ds)
    except NotARejection as exc:
        raise InvalidInstance(f"rejection note {sop_uid}: {exc}", status.CANNOT_UNDERSTAND, sop_uid) from None
    if note is None:
        return 0
    foreign = sorted({ref[0] for ref in note.references} - {note.study_uid})
    if foreign:
        raise StoreRefused(f"rejection note {sop_uid} of study {note.study_uid} references study {foreign[0]}: a "
                           f"note rejects instances of its own study only", sop_uid)
    instances = _referenced(note, sop_uid)
    others = sorted({i.sop_instance_uid for i in instances
                     if not sender.may_correct and (i.source_ae, i.source_host) != (sender.name, sender.host)})
    if others:
        raise StoreRefused(f"rejection note {sop_uid}: {len(others)} of the instances it names (e.g. {others[0]}) were "
                           f"sent by another device; only their sender or a peer trusted for corrections may "
                           f"reject them", sop_uid)
    if not instances:
        return 0
    actor = Actor(sender.name, sender.host, "dicom")
    why = f"rejection note {sop_uid}: {note.meaning} ({note.code})"
    if note.deletes:
        return removal.remove_instances(instances, actor=actor, reason=why).instances
    chosen, _ = removal.with_derived({i.pk: i for i in instances}, hiding=True)
    Instance.every.filter(pk__in=list(chosen)).update(rejected_for=note.code, rejected_at=timezone.now(),
                                                      rejected_by=sop_uid[:64])
    for (patient_id, study_uid), count in trail.count_by_study(chosen.values()).items():
        audit_record(ACCESSED, "U", actor, patient_id=patient_id, study_instance_uid=study_uid, instances=count,
                     detail=f"hidden by {why}")
    return len(instances)
