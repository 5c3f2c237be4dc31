"""De-identified export of a dataset: selected studies, or every approved annotation, as
DICOM files de-identified per PS3.15 Annex E (``dicom.deidentify``), the annotated frames
in the CAMUS layout ``sonoloop train`` reads, and a manifest.

Folder written (it must not exist yet)::

    OUT/manifest.json              what was exported and how, what was left out and why
    OUT/dicom/<pseudonym>/<new UID>.dcm
    OUT/images/<frame>.png  OUT/labels/<frame>.png  OUT/frames.csv   (approved annotations)

Pseudonyms (``ANON-0001`` …) and replacement UIDs are made for this export only; no table
linking them to the originals is written anywhere.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.utils import timezone
from PIL import Image
from pydicom import dcmread

from sonoloop.dicom.deidentify import PROFILE, RETAIN_DATES, UidMap, blank_outside_regions, deidentify
from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.regions import ultrasound_regions
from sonoloop.ml.metrics import remap
from sonoloop.ml.spec import CLASSES
from sonoloop.web import errors
from sonoloop.web.analysis.models import AnalysisResult
from sonoloop.web.annotations.document import CLASS_MAP
from sonoloop.web.annotations.models import Annotation
from sonoloop.web.annotations.services import annotation_masks, approved_annotations
from sonoloop.web.archive.models import Instance
from sonoloop.web.archive.services import instance_path
from sonoloop.web.audit.services import EXPORT, Actor, audit_record

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
VIEWS = {"A4C": "4CH", "A2C": "2CH"}


class ExportError(errors.BadRequest):
    """Nothing to export, or the output folder exists."""


@dataclass
class ExportReport:
    out: Path
    patients: int = 0
    files: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)


def _selection(study_uids: list[str], approved: bool) -> tuple[list[Instance], list[Annotation]]:
    if approved:
        annotations = list(approved_annotations().select_related("instance__series__study__patient"))
        images = {a.instance_id: a.instance for a in annotations}
        latest = {}  # the AI's SEG and SR of those images go with them (their latest result)
        for result in AnalysisResult.objects.filter(instance_id__in=list(images)).order_by("-version"):
            latest.setdefault(result.instance_id, result)
        derived = [uid for r in latest.values() for uid in (r.seg_sop_instance_uid, r.sr_sop_instance_uid) if uid]
        extra = Instance.objects.filter(sop_instance_uid__in=derived).select_related("series__study__patient")
        instances = [*images.values(), *extra]
        return instances, annotations
    instances = list(Instance.objects.filter(series__study__study_instance_uid__in=study_uids)
                     .select_related("series__study__patient").order_by("pk"))
    found = {i.series.study.study_instance_uid for i in instances}
    missing = sorted(set(study_uids) - found)
    if missing:
        raise ExportError(f"there is no study {missing[0]}")
    annotations = list(approved_annotations().filter(instance__in=instances)
                       .select_related("instance__series__study__patient"))
    return instances, annotations


def _write_dicom(report: ExportReport, instance: Instance, uids: UidMap, pseudonym: str, keep_dates: bool) -> None:
    ds = dcmread(instance_path(instance))
    cleaned = False
    if "PixelData" in ds and instance.sop_class_uid != SEG_CLASS:
        if blank_outside_regions(ds) is None:
            report.skipped.append({"sop_class": instance.sop_class_uid, "pseudonym": pseudonym,
                                   "why": "an image without ultrasound regions: burned-in text could be anywhere"})
            return
        cleaned = True
    out = deidentify(ds, uids, pseudonym, keep_dates=keep_dates, pixels_cleaned=cleaned)
    path = report.out / "dicom" / pseudonym / f"{out.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save_as(path, enforce_file_format=True)
    report.files.append({"path": str(path.relative_to(report.out)), "sop_class": str(out.SOPClassUID),
                         "modality": str(out.get("Modality", "")), "pseudonym": pseudonym,
                         "pixels": "blanked outside the ultrasound regions" if cleaned else
                         "segmentation masks" if instance.sop_class_uid == SEG_CLASS else "none"})


def _to_uint8(frame: np.ndarray, bits: int) -> np.ndarray:
    return frame.astype(np.uint8) if bits <= 8 else (frame.astype(np.float64) * 255 / (2**bits - 1)).astype(np.uint8)


def _write_frames(report: ExportReport, annotation: Annotation, pseudonym: str, split: str) -> None:
    pixels, header, bits = all_frames(instance_path(annotation.instance), luma=True)
    keep = np.zeros(pixels.shape[1:3], bool)
    for region in ultrasound_regions(header.get("SequenceOfUltrasoundRegions")):
        top, left, bottom, right = region.clipped(*keep.shape)
        keep[top:bottom, left:right] = True
    if not keep.any():
        report.skipped.append({"annotation": annotation.pk, "pseudonym": pseudonym,
                               "why": "the image has no ultrasound regions: its frames could carry burned-in text"})
        return
    numbers, masks = annotation_masks(annotation)
    masks = remap(masks, CLASS_MAP, CLASSES)  # CAMUS order: 0 background, 1 LV, 2 MYO, 3 LA
    result = AnalysisResult.objects.filter(instance=annotation.instance).order_by("-version").first()
    measurements = result.measurements if result else {}
    view = VIEWS.get(measurements.get("view", ""), "unknown")
    phases = {}
    for beat in measurements.get("beats") or []:
        phases.setdefault(beat.get("ed_frame"), "ED")
        phases.setdefault(beat.get("es_frame"), "ES")
    for images in ("images", "labels"):
        (report.out / images).mkdir(exist_ok=True)
    for number, mask in zip(numbers, masks):
        frame_id = f"{pseudonym}_{view}_a{annotation.pk}_f{number:03d}"
        image = np.where(keep, _to_uint8(pixels[number - 1], bits), 0).astype(np.uint8)
        Image.fromarray(image).save(report.out / "images" / f"{frame_id}.png")
        Image.fromarray(mask.astype(np.uint8)).save(report.out / "labels" / f"{frame_id}.png")
        report.frames.append({"frame": frame_id, "patient": pseudonym, "view": view,
                              "phase": phases.get(number, "frame"), "split": split})


def _splits(pseudonyms: list[str]) -> dict[str, str]:
    """By patient, never by frame: every fifth patient validates, and at least one when there
    are two or more."""
    splits = {p: "validation" if i % 5 == 4 else "training" for i, p in enumerate(pseudonyms)}
    if len(pseudonyms) >= 2 and "validation" not in splits.values():
        splits[pseudonyms[-1]] = "validation"
    return splits


def dataset_export(out: Path, *, study_uids: list[str] | None = None, approved: bool = False,
                   keep_dates: bool = False, actor: Actor) -> ExportReport:
    """Export the studies named (or, with ``approved``, every approved annotation) to ``out``."""
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} exists; an export goes to a new folder")
    if not study_uids and not approved:
        raise ExportError("name studies to export, or ask for every approved annotation")
    instances, annotations = _selection(list(study_uids or []), approved)
    if not instances:
        raise ExportError("there is nothing to export")
    patients = sorted({i.series.study.patient_id for i in instances})
    pseudonyms = {pk: f"ANON-{n:04d}" for n, pk in enumerate(patients, start=1)}
    splits = _splits(list(pseudonyms.values()))
    report = ExportReport(out, patients=len(patients))
    out.mkdir(parents=True)
    try:
        uids = UidMap()
        for instance in instances:
            _write_dicom(report, instance, uids, pseudonyms[instance.series.study.patient_id], keep_dates)
        for annotation in annotations:
            pseudonym = pseudonyms[annotation.instance.series.study.patient_id]
            _write_frames(report, annotation, pseudonym, splits[pseudonym])
        if report.frames:
            with (out / "frames.csv").open("w", newline="") as fh:
                writer = csv.DictWriter(fh, ["frame", "patient", "view", "phase", "split"])
                writer.writeheader()
                writer.writerows(report.frames)
        _manifest(report, keep_dates, approved)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    for (patient_id, study_uid), count in _by_study(instances).items():
        audit_record(EXPORT, "R", actor, patient_id=patient_id, study_instance_uid=study_uid, instances=count,
                     detail=f"de-identified export to {out}")
    return report


def _by_study(instances: list[Instance]) -> dict:
    counts: dict = {}
    for i in instances:
        key = (i.series.study.patient.patient_id, i.series.study.study_instance_uid)
        counts[key] = counts.get(key, 0) + 1
    return counts


def _manifest(report: ExportReport, keep_dates: bool, approved: bool) -> None:
    methods = [*PROFILE, RETAIN_DATES] if keep_dates else PROFILE
    manifest = {
        "created": timezone.now().date().isoformat(),
        "what": "every approved annotation" if approved else "selected studies",
        "deidentification": {
            "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, by allowlist "
                       "(attributes not needed to read and train on the images are removed, private ones too)",
            "methods": [{"code": c, "meaning": m} for c, m in methods],
            "retain_longitudinal_dates": keep_dates,
            "uids": "replaced consistently within this export (images, SEG and SR reference each other); "
                    "not linkable to the originals",
            "pixels": "everything outside the ultrasound regions is set to 0 (burned-in names and dates sit "
                      "there); images without regions are left out",
        },
        "patients": report.patients,
        "files": report.files,
        "skipped": report.skipped,
        "training_frames": {"count": len(report.frames), "layout": "CAMUS (images/, labels/, frames.csv); labels "
                            "0 background, 1 LV, 2 myocardium, 3 LA; split by patient"} if report.frames else None,
    }
    (report.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
