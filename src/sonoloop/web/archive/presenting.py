"""What the pages and the JSON API show of stored instances and studies."""

from __future__ import annotations

from sonoloop.dicom.instance import sop_class_name

from . import previews
from .models import Instance, Study
from .store import instance_path


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


def wadouri_url(instance: Instance, base_url: str) -> str:
    """The file over WADO-URI, which the browser viewers load frame by frame."""
    series, study = instance.series, instance.series.study
    return (f"{base_url.rstrip('/')}/dicomweb/wado?requestType=WADO&studyUID={study.study_instance_uid}"
            f"&seriesUID={series.series_instance_uid}&objectUID={instance.sop_instance_uid}"
            f"&contentType=application%2Fdicom")


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
            "wadouri": wadouri_url(instance, base_url),
        },
    }
