"""Reading a received DICOM instance: validate it and pull out what the archive indexes.

Nothing here touches disk or a database: bytes in, an :class:`InstanceRecord` or an
:class:`InvalidInstance` (carrying the DICOM status a C-STORE should answer) out.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from . import status
from .attributes import INDEXED

# Leading zeros in a UID component are against PS3.5 9.1 but real devices send them; pydicom's
# UID.is_valid refuses them, this accepts them (digits and dots, at most 64 characters).
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

DEFLATED = "1.2.840.10008.1.2.1.99"

def is_native(transfer_syntax: str) -> bool:
    """Pixel Data not encapsulated (pydicom's table); an unknown syntax counts as encapsulated."""
    uid = UID(transfer_syntax)
    return uid.is_transfer_syntax and not uid.is_encapsulated


class InvalidInstance(ValueError):
    """A dataset that must not be stored; ``status`` is the C-STORE failure status."""

    def __init__(self, message: str, status_code: int, sop_instance_uid: str = ""):
        super().__init__(message)
        self.status = status_code
        self.sop_instance_uid = sop_instance_uid


def is_valid_uid(value: str) -> bool:
    return bool(value) and len(value) <= 64 and bool(_UID_RE.match(value))


@dataclass(frozen=True)
class InstanceRecord:
    """The attributes the archive indexes, as plain strings and numbers."""

    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    study_id: str
    accession_number: str
    study_description: str
    referring_physician_name: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    series_date: str
    body_part_examined: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    number_of_frames: int
    rows: int | None
    columns: int | None
    photometric_interpretation: str
    transfer_syntax_uid: str
    content_date: str
    content_time: str

    def as_dict(self) -> dict:
        return asdict(self)


_TAGS: dict[str, BaseTag] = {}


def _get(ds: Dataset, keyword: str):
    """``ds.get(keyword)`` for a top-level element, its tag looked up once per keyword (every
    received instance reads the same thirty; pydicom resolved each keyword every time)."""
    tag = _TAGS.get(keyword)
    if tag is None:
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"{keyword} is not a DICOM keyword")
        tag = _TAGS.setdefault(keyword, Tag(keyword))
    try:
        return ds[tag].value
    except KeyError:
        return None


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    value = _get(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _get(ds, keyword)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str, sop_instance_uid: str) -> str:
    value = _text(ds, keyword, 128).rstrip("\x00")
    if not value:
        raise InvalidInstance(f"{keyword} is missing", status.MISSING_UID, sop_instance_uid)
    if not is_valid_uid(value):
        raise InvalidInstance(f"{keyword} {value[:70]!r} is not a valid UID", status.INVALID_UID, sop_instance_uid)
    return value


def _check_pixel_data(ds: Dataset, transfer_syntax: str, sop_instance_uid: str) -> None:
    if "PixelData" not in ds:
        if "Rows" in ds and not any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
            raise InvalidInstance("the image has no Pixel Data: the dataset is truncated", status.TRUNCATED, sop_instance_uid)
        return
    data = ds.PixelData
    if is_native(transfer_syntax):
        try:  # pydicom's count: it knows that native YBR_FULL_422 is two thirds the size, and 1-bit pixels
            expected = get_expected_length(ds, unit="bytes")
        except (AttributeError, TypeError, ValueError, KeyError):
            expected = None  # the attributes do not say
        if expected is not None and len(data) < expected:
            raise InvalidInstance(
                f"Pixel Data holds {len(data)} bytes but Rows/Columns/frames need {expected}: the dataset is truncated",
                status.TRUNCATED,
                sop_instance_uid,
            )
        return
    try:
        fragments = sum(1 for _ in generate_fragments(data))
    except (ValueError, EOFError) as exc:
        raise InvalidInstance(f"encapsulated Pixel Data is damaged: {exc}", status.TRUNCATED, sop_instance_uid) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if fragments < frames:
        raise InvalidInstance(
            f"encapsulated Pixel Data has {fragments} fragments for {frames} frames: the dataset is truncated",
            status.TRUNCATED,
            sop_instance_uid,
        )


def _check_ends_in_file(ds: Dataset, size: int) -> None:
    """pydicom reads a last element whose declared length runs past the end of the data as far
    as the data goes, without a word: such a dataset was cut short (or lies) and is refused."""
    meta = getattr(ds, "file_meta", None)
    if not len(ds) or (meta is not None and meta.get("TransferSyntaxUID") == DEFLATED):
        return  # a deflated dataset's offsets are those of the inflated stream
    last = ds.get_item(max(map(int, ds.keys())))  # as plain ints: Tag's own comparisons are Python code
    length, tell = getattr(last, "length", None), getattr(last, "value_tell", None)
    if length is not None and tell is not None and length != 0xFFFFFFFF and tell + length > size:
        raise InvalidInstance(f"element {last.tag} declares {length} bytes but the data ends {size - tell} bytes "
                              f"after its start: the dataset is truncated", status.TRUNCATED,
                              str(ds.get("SOPInstanceUID", "")))


def decoded_size(ds: Dataset) -> int:
    """Bytes the pixels take once decoded (what a decoder allocates): rows × columns × samples ×
    frames × bytes per sample; 0 without an image."""
    try:
        rows, cols = int(_get(ds, "Rows") or 0), int(_get(ds, "Columns") or 0)
        samples = int(_get(ds, "SamplesPerPixel") or 1)
        frames = int(_get(ds, "NumberOfFrames") or 1)
        bits = int(_get(ds, "BitsAllocated") or 8)
    except (TypeError, ValueError):
        return 0
    return rows * cols * samples * frames * max(1, (bits + 7) // 8)


def read_instance(raw: bytes, expected: tuple[str, str] | None = None,
                  max_decoded_bytes: int | None = None) -> tuple[Dataset, InstanceRecord]:
    """Parse a DICOM file (preamble + file meta + dataset) completely and validate it.

    ``expected`` is the (SOP Class UID, SOP Instance UID) a C-STORE request announced;
    a dataset that says otherwise is refused (PS3.4 B.2.3, "does not match SOP Class").
    An image that would decode to more than ``max_decoded_bytes`` is refused (a few MB of
    JPEG can declare gigabytes of pixels): every stored image can then be decoded safely.
    """
    try:
        # Reading walks every element's tag and length (a broken structure raises here);
        # values are decoded lazily, only those the index needs.
        ds = dcmread(BytesIO(raw))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, LookupError) as exc:
        raise InvalidInstance(f"the dataset cannot be parsed: {exc}", status.CANNOT_UNDERSTAND) from None
    except Exception as exc:  # pydicom raises a broad mix on damaged input
        raise InvalidInstance(f"the dataset cannot be parsed: {type(exc).__name__}: {exc}", status.CANNOT_UNDERSTAND) from None
    _check_ends_in_file(ds, len(raw))
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        raise InvalidInstance("this is not a DICOM composite instance (no SOP Class or Instance UID)", status.CANNOT_UNDERSTAND)
    record = record_from_dataset(ds)
    if max_decoded_bytes is not None and decoded_size(ds) > max_decoded_bytes:
        raise InvalidInstance(f"the image would decode to {decoded_size(ds)} bytes, over the "
                              f"{max_decoded_bytes}-byte limit", status.TOO_LARGE, record.sop_instance_uid)
    if expected is not None:
        sop_class, sop_instance = expected
        if (sop_class and sop_class != record.sop_class_uid) or (sop_instance and sop_instance != record.sop_instance_uid):
            raise InvalidInstance(
                f"the dataset's SOP Class/Instance ({record.sop_class_uid}, {record.sop_instance_uid}) "
                f"differ from the request's ({sop_class}, {sop_instance})",
                status.DATASET_DOES_NOT_MATCH,
                record.sop_instance_uid,
            )
    return ds, record


_UID_KEYWORDS = frozenset(a.keyword for a in INDEXED if dictionary_VR(a.keyword) == "UI")


def record_from_dataset(ds: Dataset) -> InstanceRecord:
    sop_instance_uid = _text(ds, "SOPInstanceUID", 128)
    sop_instance_uid = _uid(ds, "SOPInstanceUID", sop_instance_uid)
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not transfer_syntax:
        raise InvalidInstance("the file meta information has no Transfer Syntax UID", status.CANNOT_UNDERSTAND, sop_instance_uid)
    _check_pixel_data(ds, transfer_syntax, sop_instance_uid)
    values = {"sop_instance_uid": sop_instance_uid, "transfer_syntax_uid": transfer_syntax}
    for a in INDEXED:  # each indexed attribute as the table describes it
        if a.computed or a.field in values:
            continue
        if a.keyword in _UID_KEYWORDS:
            values[a.field] = _uid(ds, a.keyword, sop_instance_uid)
        elif a.number:
            values[a.field] = _int(ds, a.keyword)
        else:
            values[a.field] = _text(ds, a.keyword, a.length)
    values["number_of_frames"] = values["number_of_frames"] or (1 if "PixelData" in ds else 0)
    return InstanceRecord(**values)


def sop_class_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid
