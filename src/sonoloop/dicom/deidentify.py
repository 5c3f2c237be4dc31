"""De-identification for export (PS3.15 Annex E, Basic Application Level Confidentiality Profile).

The profile's table lists what to remove, empty or replace and keeps everything else. This
module is stricter, so that an attribute the table or a vendor forgot cannot leak: it keeps
an *allowlist* of what an echo image, a segmentation or a measurement report needs to be
read and trained on (pixels and their geometry, ultrasound calibration, frame timing,
segments, coded measurements) and drops the rest, private attributes included. Type 2
identifiers the IOD requires are present but empty or pseudonymous; every UID that is not a
well-known DICOM UID is replaced through one :class:`UidMap`, so that images, SEG and SR
exported together still reference each other; dates and times go unless the
retain-longitudinal-dates option is asked for. Inside kept sequences, names, addresses,
dates and free text are removed or blanked. Burned-in text is handled separately
(:func:`blank_outside_regions`): echo machines write the patient's name in the image header
area, outside the ultrasound regions.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import secrets

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UID_dictionary

from .regions import ultrasound_regions

PROFILE = [  # De-identification Method Code Sequence (CID 7050)
    ("113100", "Basic Application Confidentiality Profile"),
    ("113101", "Clean Pixel Data Option"),  # blanked outside the ultrasound regions
    ("113105", "Clean Descriptors Option"),  # free text dropped (allowlist)
]
RETAIN_DATES = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")

# What an exported instance keeps (top level). Everything else is removed.
KEEP = frozenset("""
    SOPClassUID SOPInstanceUID Modality ImageType InstanceNumber SeriesNumber
    SamplesPerPixel PhotometricInterpretation Rows Columns BitsAllocated BitsStored HighBit
    PixelRepresentation PlanarConfiguration NumberOfFrames PixelData PixelSpacing
    FrameTime FrameTimeVector FrameIncrementPointer CineRate RecommendedDisplayFrameRate
    ActualFrameDuration HeartRate LossyImageCompression LossyImageCompressionRatio
    LossyImageCompressionMethod SequenceOfUltrasoundRegions RescaleSlope RescaleIntercept
    WindowCenter WindowWidth RedPaletteColorLookupTableDescriptor GreenPaletteColorLookupTableDescriptor
    BluePaletteColorLookupTableDescriptor RedPaletteColorLookupTableData GreenPaletteColorLookupTableData
    BluePaletteColorLookupTableData ImageLaterality Laterality ViewCodeSequence TransducerData
    StudyInstanceUID SeriesInstanceUID FrameOfReferenceUID
    SegmentationType SegmentationFractionalType MaximumFractionalValue SegmentSequence
    SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence DimensionOrganizationSequence
    DimensionIndexSequence DimensionOrganizationType ReferencedSeriesSequence ContentLabel ContentDescription
    ConceptNameCodeSequence ContentTemplateSequence ContentSequence ValueType ContinuityOfContent
    CompletionFlag VerificationFlag CurrentRequestedProcedureEvidenceSequence
    ImageOrientationPatient ImagePositionPatient SliceThickness SpacingBetweenSlices
    BurnedInAnnotation RecognizableVisualFeatures PatientOrientation
    Manufacturer ManufacturerModelName SoftwareVersions
    ReferencedPerformedProcedureStepSequence PerformedProcedureCodeSequence
""".split())
# Required by the IOD (type 2): present, but empty.
EMPTY = ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
         "StudyID", "AccessionNumber")
DUMMY = {"ContentDate": "19000101", "ContentTime": "000000"}  # type 1 in SR documents: a dummy value (Annex E "D")
_NESTED_DROP_VRS = {"PN", "AE", "DA", "DT", "TM", "SH", "LO", "AS"}  # names, places, IDs, dates, ages
_NESTED_KEEP = frozenset("""
    CodeValue CodingSchemeDesignator CodingSchemeVersion CodeMeaning LongCodeValue URNCodeValue
    SegmentLabel SegmentAlgorithmName SegmentAlgorithmType SegmentDescription MappingResource
    AlgorithmName AlgorithmVersion AlgorithmParameters AlgorithmSource
    ContextIdentifier ContextUID TemplateIdentifier MappingResourceName DimensionDescriptionLabel
    ValueType RelationshipType ContinuityOfContent UnitsOfMeasurement MeasurementUnitsCodeSequence
""".split())
_FREE_TEXT_VRS = {"UT", "ST", "LT"}


class UidMap:
    """Replacement UIDs, the same one for the same original within an export (HMAC of the
    original under a key made for the export: not reversible, not linkable across exports)."""

    def __init__(self, key: bytes | None = None):
        self._key = key or secrets.token_bytes(32)
        self.replaced: set[str] = set()

    def __call__(self, uid: str) -> str:
        uid = str(uid).strip()
        if not uid or uid in UID_dictionary:  # a well-known DICOM UID (class, syntax, coding scheme)
            return uid
        digest = hmac.new(self._key, uid.encode(), hashlib.sha256).digest()
        self.replaced.add(uid)
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _scrub_nested(ds: Dataset, uids: UidMap, keep_dates: bool) -> None:
    for element in list(ds):
        if element.tag.is_private:
            del ds[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _scrub_nested(item, uids, keep_dates)
        elif element.VR == "UI":
            element.value = [uids(v) for v in element.value] if element.VM > 1 else uids(element.value)
        elif element.keyword in _NESTED_KEEP:
            continue
        elif element.VR in ("DA", "DT", "TM") and keep_dates:
            continue
        elif element.VR in _NESTED_DROP_VRS:
            del ds[element.tag]
        elif element.VR in _FREE_TEXT_VRS:
            element.value = "(removed by de-identification)" if element.keyword == "TextValue" else ""


def deidentify(ds: Dataset, uids: UidMap, pseudonym: str, *, keep_dates: bool = False,
               pixels_cleaned: bool = False) -> Dataset:
    """A de-identified copy of ``ds`` (the original is not changed); ``pseudonym`` becomes its
    Patient ID (and name)."""
    out = Dataset()
    for element in ds:
        if element.keyword in KEEP and not element.tag.is_private:
            out.add(copy.copy(element))  # the original dataset is not changed
    for keyword in ("SequenceOfUltrasoundRegions", "SegmentSequence", "SharedFunctionalGroupsSequence",
                    "PerFrameFunctionalGroupsSequence", "DimensionOrganizationSequence", "DimensionIndexSequence",
                    "ReferencedSeriesSequence", "ConceptNameCodeSequence", "ContentTemplateSequence",
                    "ContentSequence", "CurrentRequestedProcedureEvidenceSequence", "ViewCodeSequence",
                    "ReferencedPerformedProcedureStepSequence", "PerformedProcedureCodeSequence"):
        if keyword in out:
            setattr(out, keyword, Sequence([_copy(item) for item in out[keyword].value]))
            for item in out[keyword].value:
                _scrub_nested(item, uids, keep_dates)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if keyword in out:
            setattr(out, keyword, uids(out[keyword].value))
    for keyword in EMPTY:
        setattr(out, keyword, "")
    for keyword, value in DUMMY.items():
        setattr(out, keyword, value)
    if keep_dates:
        for keyword in ("StudyDate", "StudyTime", "SeriesDate", "ContentDate", "ContentTime"):
            if keyword in ds:
                setattr(out, keyword, ds[keyword].value)
    if "DeviceSerialNumber" in ds:  # type 1 in some IODs (SEG): a dummy, as Annex E allows
        out.DeviceSerialNumber = "0"
    out.PatientID = pseudonym
    out.PatientName = pseudonym
    out.SpecificCharacterSet = "ISO_IR 192"
    out.PatientIdentityRemoved = "YES"
    out.LongitudinalTemporalInformationModified = "UNMODIFIED" if keep_dates else "REMOVED"
    methods = PROFILE if pixels_cleaned else [c for c in PROFILE if c[0] != "113101"]
    if keep_dates:
        methods = [*methods, RETAIN_DATES]
    out.DeidentificationMethod = "Sonoloop: PS3.15 E basic (allowlist)" + ("; clean pixels" if pixels_cleaned else "")
    out.DeidentificationMethodCodeSequence = [_code(value, meaning) for value, meaning in methods]
    if pixels_cleaned:
        out.BurnedInAnnotation = "NO"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.SOPClassUID
    meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID if hasattr(ds, "file_meta") else ExplicitVRLittleEndian
    out.file_meta = meta
    return out


def _copy(item: Dataset) -> Dataset:
    return copy.deepcopy(item)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def blank_outside_regions(ds: Dataset) -> Dataset | None:
    """``ds`` with every pixel outside its ultrasound regions set to 0, written uncompressed
    (explicit VR little endian, RGB for colour); None when it has no regions to go by (the
    caller leaves it out: burned-in text could be anywhere)."""
    regions = ultrasound_regions(ds.get("SequenceOfUltrasoundRegions"))
    if not regions or "PixelData" not in ds:
        return None
    pixels = ds.pixel_array  # pydicom decodes, colour as RGB
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.SamplesPerPixel)
    shaped = pixels.reshape((frames, ds.Rows, ds.Columns, samples) if samples > 1 else (frames, ds.Rows, ds.Columns))
    keep = np.zeros((ds.Rows, ds.Columns), bool)
    for region in regions:
        top, left, bottom, right = region.clipped(ds.Rows, ds.Columns)
        keep[top:bottom, left:right] = True
    cleaned = np.where(keep[None, ..., None] if samples > 1 else keep[None], shaped, 0).astype(shaped.dtype)
    ds.PixelData = cleaned.tobytes()
    if samples > 1:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    return ds
