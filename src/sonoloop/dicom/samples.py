"""Example data for demos, tests and benchmarks: real echo files with fresh identities."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

# Real ultrasound files shipped by pydicom / pydicom-data.
ECHO_CINE_JPEG = "color3d_jpeg_baseline.dcm"  # 120-frame apical 4-chamber cine, JPEG baseline YBR
ECHO_CINE_30 = "examples_ybr_color.dcm"  # pydicom's own 30-frame cut of such a cine
US_RLE_PALETTE = "OBXXXX1A_rle.dcm"  # single-frame US, RLE, palette colour
US_J2K = "US1_J2KR.dcm"  # single-frame US, JPEG 2000 lossless, RGB
US_NATIVE = "US1_UNCR.dcm"  # the same, uncompressed


def sample_path(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed; `pip install pydicom-data` ships it")
    return Path(path)


def write_copies(source: Path, out_dir: Path, count: int, per_study: int = 1, prefix: str = "copy",
                 patient_id: str = "SYNTH") -> list[Path]:
    """``count`` copies of ``source`` with new Study/Series/SOP Instance UIDs, ``per_study`` to a study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    template = dcmread(source)
    paths = []
    study_uid = series_uid = ""
    for n in range(count):
        if n % per_study == 0:
            study_uid, series_uid = generate_uid(), generate_uid()
        template.StudyInstanceUID = study_uid
        template.SeriesInstanceUID = series_uid
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.PatientID = f"{patient_id}{n // per_study:05d}"
        template.InstanceNumber = n % per_study + 1
        path = out_dir / f"{prefix}{n:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_cut(source: Path, out_path: Path, first: int, count: int) -> Path:
    """Frames ``first``..``first + count - 1`` of a cine as a new instance (new UIDs), the
    compressed frames copied as they are (no re-encoding)."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = dcmread(source)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= first < first + count <= frames:
        raise ValueError(f"frames {first}..{first + count - 1} are not all in this {frames}-frame cine")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        kept = list(generate_frames(ds.PixelData, number_of_frames=frames))[first: first + count]
        ds.PixelData = encapsulate(kept)
    else:
        size = len(ds.PixelData) // frames
        ds.PixelData = ds.PixelData[first * size: (first + count) * size]
    ds.NumberOfFrames = count
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(out_path, enforce_file_format=True)
    return out_path
