"""Annotation services: save a version, move its review status, read masks, export a SEG."""

from __future__ import annotations

import gzip
import json
import logging
from functools import lru_cache

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from sonoloop.dicom.filestore import FileStore
from sonoloop.web import errors
from sonoloop.web.accounts.roles import has_role
from sonoloop.web.analysis.models import AnalysisResult
from sonoloop.web.analysis.services import result_labels
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.removal import Removing
from sonoloop.web.audit.services import ACCESSED, Actor, audit_record
from sonoloop.web.errors import Conflict

from . import document
from .document import DocumentError
from .models import Annotation, AnnotationEvent

log = logging.getLogger("sonoloop.annotations")


class StatusError(Conflict):
    """A status change that the annotation's state does not allow (HTTP 409)."""


class NotAllowed(errors.NotAllowed):
    """A change this user's role does not allow (HTTP 403)."""


def on_instance_replacing(sender, instance: Instance, **kwargs) -> str | None:
    """Expert masks were drawn on the stored pixels: another copy must not slip in under them."""
    if Annotation.objects.filter(instance=instance).exists():
        return "has expert annotations"
    return None


def on_instances_removing(sender, instances: list[Instance], hiding: bool = False, **kwargs):
    """Deleting an image keeps its annotations as records (masks, history, the provenance a
    trained model names) marked as referring to deleted data; the SEG exported from one goes
    with the image it references."""
    removing = Removing()
    pks = [i.pk for i in instances]
    uids = [i.sop_instance_uid for i in instances]
    now = timezone.now()
    for start in range(0, len(pks), 500):
        chunk = Annotation.objects.filter(instance_id__in=pks[start: start + 500])
        removing.derived |= set(chunk.exclude(seg_sop_instance_uid="").values_list("seg_sop_instance_uid", flat=True))
        if hiding:  # rejected: the image is hidden, not gone; training leaves it out by its state
            continue
        chunk.update(source_deleted_at=now)
        Annotation.objects.filter(seg_sop_instance_uid__in=uids[start: start + 500]).update(seg_sop_instance_uid="")
    return removing


@lru_cache(maxsize=1)
def annotations_store() -> FileStore:
    config = settings.CONFIG
    return FileStore(config.data_dir / "annotations", config.tmp_dir, suffix=".json.gz")


def _frames_of(instance: Instance) -> int:
    return int(instance.number_of_frames or 1)


def _reference_result(instance: Instance, version: int | None) -> AnalysisResult | None:
    """The AI result with that version (the latest without one)."""
    if version is None:
        return instance.analysis_results.first()
    result = instance.analysis_results.filter(version=version).first()
    if result is None:
        raise DocumentError(f"started_from_result: this instance has no AI result version {version}")
    return result


def annotation_create(instance: Instance, user, body: dict, address: str = "") -> Annotation:
    """Check ``body`` (the client's upload) and save it as the instance's next annotation version."""
    if not instance.rows or not instance.columns:
        raise DocumentError("this instance has no image to annotate")
    frames, masks, extras = document.parse_upload(
        body, rows=instance.rows, columns=instance.columns, number_of_frames=_frames_of(instance),
        sop_instance_uid=instance.sop_instance_uid)
    status = extras["status"] or Annotation.DRAFT
    if status not in (Annotation.DRAFT, Annotation.SUBMITTED):
        raise DocumentError("a new annotation is saved as draft or submitted")
    parent = None
    if extras["parent_version"] is not None:
        parent = instance.annotations.filter(version=extras["parent_version"]).first()
        if parent is None:
            raise DocumentError(f"parent_version {extras['parent_version']} is not an annotation of this instance")
    started = _reference_result(instance, extras["started_from_result"]) if extras["started_from_result"] else None
    reference = started or _reference_result(instance, None)
    agreement = _agreement(reference, frames, masks) if reference else {}

    for _ in range(3):  # two saves at once: the second takes the next number
        version = (instance.annotations.aggregate(v=Max("version"))["v"] or 0) + 1
        now = timezone.now()
        doc = document.build(
            sop_instance_uid=instance.sop_instance_uid, rows=instance.rows, columns=instance.columns,
            number_of_frames=_frames_of(instance), frames=frames, masks=masks, author=user.get_username(),
            created=now.isoformat(), version=version, parent_version=parent.version if parent else None,
            started_from={"result_version": started.version, "model": started.model_name,
                          "model_version": started.model_version} if started else None)
        key = annotations_store().put(gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 6))
        try:
            with transaction.atomic():
                annotation = Annotation.objects.create(
                    instance=instance, version=version, parent=parent, author=user, status=status,
                    sop_instance_uid=instance.sop_instance_uid,
                    study_instance_uid=instance.series.study.study_instance_uid,
                    status_changed_at=now, started_from=started,
                    model_name=started.model_name if started else "", model_version=started.model_version if started else "",
                    frames=frames, document_key=key, agreement=agreement, comment=extras["comment"] or "")
                AnnotationEvent.objects.create(annotation=annotation, user=user, action="created")
                if status == Annotation.SUBMITTED:
                    AnnotationEvent.objects.create(annotation=annotation, user=user, action="submitted")
        except IntegrityError:
            annotations_store().path(key).unlink(missing_ok=True)
            continue
        except BaseException:
            annotations_store().path(key).unlink(missing_ok=True)
            raise
        log.info("annotation v%s of %s saved by %s (%s frame(s))", version, instance.sop_instance_uid,
                 user.get_username(), len(frames))
        _trail(annotation, user, "C", f"annotation v{version} saved ({len(frames)} frames, {status})", address)
        return annotation
    raise DocumentError("another annotation of this instance was being saved at the same time; save again")


def _agreement(result: AnalysisResult, frames: list[int], masks: np.ndarray) -> dict:
    labels = document.from_model(result_labels(result), result.classes)
    if labels.shape[1:] != masks.shape[1:]:
        return {}
    ai = labels[np.asarray(frames) - 1]
    scores = document.dice_per_class(ai, masks)
    known = [v for v in scores.values() if v is not None]
    changed = int((ai != masks).sum())
    return {"result_version": result.version, "dice": scores,
            "mean_dice": round(sum(known) / len(known), 4) if known else None,
            "pixels_changed": changed, "fraction_changed": round(changed / masks.size, 6)}


def annotation_document(annotation: Annotation) -> dict:
    with gzip.open(annotations_store().path(annotation.document_key), "rt") as fh:
        return json.load(fh)


def annotation_masks(annotation: Annotation) -> tuple[list[int], np.ndarray]:
    return document.read_masks(annotation_document(annotation))


TRANSITIONS = {  # (from, to): (action, role)
    (Annotation.DRAFT, Annotation.SUBMITTED): ("submitted", "annotator"),
    (Annotation.SUBMITTED, Annotation.APPROVED): ("approved", "reviewer"),
    (Annotation.SUBMITTED, Annotation.DRAFT): ("returned", "reviewer"),
    # a wrong approval is withdrawn (with the reason), never edited: it no longer trains
    (Annotation.APPROVED, Annotation.WITHDRAWN): ("withdrawn", "reviewer"),
}


def annotation_status_set(annotation: Annotation, user, status: str, note: str = "", address: str = "") -> Annotation:
    if status not in dict(Annotation.STATUSES):
        raise StatusError(f"status must be one of {', '.join(dict(Annotation.STATUSES))}")
    move = TRANSITIONS.get((annotation.status, status))
    if move is None:
        raise StatusError(f"an annotation that is {annotation.status} cannot become {status}")
    action, role = move
    if annotation.instance_id is None and status != Annotation.WITHDRAWN:
        raise StatusError(f"the image this annotation is of ({annotation.sop_instance_uid}) was deleted; "
                          f"it is kept as a record only")
    if not has_role(user, role):
        raise NotAllowed(f"only a user with the {role} role can make an annotation {status}")
    if action == "submitted" and annotation.author_id != user.pk and not has_role(user, "reviewer"):
        raise NotAllowed("only the author or a reviewer can submit this annotation")
    if action == "approved" and annotation.author_id == user.pk:
        if not has_role(user, "admin"):
            raise NotAllowed("a reviewer cannot approve their own annotation; another reviewer must")
        if not note.strip():
            raise NotAllowed("an admin approving their own annotation skips the second pair of eyes: "
                             "say why in the note")
        note = f"self-approved by an admin: {note.strip()}"
    if action == "withdrawn" and not note.strip():
        raise StatusError("say why the approval is withdrawn (note)")
    with transaction.atomic():
        moved = Annotation.objects.filter(pk=annotation.pk, status=annotation.status).update(
            status=status, status_changed_at=timezone.now())
        if moved != 1:
            raise StatusError("the annotation's status changed meanwhile; reload and try again")
        AnnotationEvent.objects.create(annotation=annotation, user=user, action=action, note=note[:2000])
    annotation.refresh_from_db()
    _trail(annotation, user, "U", f"annotation v{annotation.version} {action}", address)
    return annotation


def annotation_export_seg(annotation: Annotation, user, address: str = "") -> str:
    """Store an approved annotation as a MANUAL DICOM SEG in the archive; its SOP Instance UID."""
    from pydicom import dcmread

    from sonoloop.dicom.seg import build_segmentation
    from sonoloop.web.archive.services import dataset_store, instance_path, own_device, own_uid

    if not has_role(user, "reviewer"):
        raise NotAllowed("exporting an annotation as DICOM SEG needs the reviewer role")
    if annotation.status != Annotation.APPROVED:
        raise StatusError("only an approved annotation is exported as DICOM SEG")
    if annotation.seg_sop_instance_uid:
        return annotation.seg_sop_instance_uid
    if annotation.instance_id is None:
        raise StatusError("the annotated image was deleted: there is nothing to reference in a DICOM SEG")
    frames, masks = annotation_masks(annotation)
    header = dcmread(instance_path(annotation.instance), stop_before_pixels=True)
    classes = document.CLASS_MAP
    seg = build_segmentation(
        header, masks, classes, None, frame_numbers=frames, creator=annotation.author.get_username(),
        series_number=800 + annotation.version,
        # the same UIDs on a repeated export (a crash before the row below commits, two clicks)
        series_uid=own_uid("annotation", annotation.pk, "seg series"),
        sop_instance_uid=own_uid("annotation", annotation.pk, "seg"),
        device=own_device(),
        description=f"Expert segmentation v{annotation.version} ({annotation.author.get_username()})")
    dataset_store(seg)
    with transaction.atomic():
        Annotation.objects.filter(pk=annotation.pk).update(seg_sop_instance_uid=seg.SOPInstanceUID)
        AnnotationEvent.objects.create(annotation=annotation, user=user, action="exported",
                                       note=f"DICOM SEG {seg.SOPInstanceUID}")
    annotation.seg_sop_instance_uid = seg.SOPInstanceUID
    _trail(annotation, user, "C", f"annotation v{annotation.version} exported as DICOM SEG {seg.SOPInstanceUID}",
           address)
    return seg.SOPInstanceUID


def _trail(annotation: Annotation, user, action: str, detail: str, address: str = "") -> None:
    patient_id = annotation.instance.series.study.patient.patient_id if annotation.instance_id else ""
    audit_record(ACCESSED, action, Actor(user.get_username(), address, "web", user.pk),
                 patient_id=patient_id, study_instance_uid=annotation.study_instance_uid,
                 instances=1, detail=detail)


def approved_annotations():
    """Training data: approved annotations only, of images still in the archive and not rejected."""
    return Annotation.objects.filter(status=Annotation.APPROVED, instance__isnull=False,
                                     instance__rejected_for="").select_related("instance", "author")


def ai_masks(result: AnalysisResult) -> dict:
    """An AI result's label maps in the annotation document's mask encoding and class map
    (remapped by name from the model's own order), every frame."""
    labels = document.from_model(result_labels(result), result.classes)
    return {
        "result_version": result.version,
        "model": {"name": result.model_name, "version": result.model_version},
        "rows": int(labels.shape[1]),
        "columns": int(labels.shape[2]),
        "number_of_frames": int(labels.shape[0]),
        "classes": {str(k): v for k, v in document.CLASSES.items()},
        "masks": {str(i + 1): {"encoding": document.ENCODING, "counts": document.rle_encode(m)}
                  for i, m in enumerate(labels)},
    }


def annotation_summary(annotation: Annotation, base_url: str = "") -> dict:
    frames = annotation.frames
    return {
        "id": annotation.pk,
        "version": annotation.version,
        "instance": annotation.sop_instance_uid,
        "image_deleted_at": annotation.source_deleted_at.isoformat() if annotation.source_deleted_at else None,
        "parent_version": annotation.parent.version if annotation.parent_id else None,
        "author": annotation.author.get_username(),
        "created_at": annotation.created_at.isoformat(),
        "status": annotation.status,
        "status_changed_at": annotation.status_changed_at.isoformat() if annotation.status_changed_at else None,
        "frames": frames,
        "frame_count": len(frames),
        "started_from": {"result_version": annotation.started_from.version, "model": annotation.model_name,
                         "model_version": annotation.model_version} if annotation.started_from_id else None,
        "agreement": annotation.agreement,
        "comment": annotation.comment,
        "segmentation": annotation.seg_sop_instance_uid or None,
        "history": [{"action": e.action, "user": e.user.get_username(), "at": e.at.isoformat(), "note": e.note}
                    for e in annotation.events.select_related("user")],
        "url": f"{base_url.rstrip('/')}/api/annotations/{annotation.pk}",
    }
