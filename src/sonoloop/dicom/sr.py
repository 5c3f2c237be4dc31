"""The echo measurements as a DICOM Structured Report: TID 1500 Measurement Report
(highdicom), one measurement group per structure, each referencing its segment of the
Segmentation and the source frames it was measured on (ED and ES of the representative
beat: the one whose EF is nearest the median).

Codes: LOINC echo measurement names (CID 12200 family) with the method (DCM: area–length
single plane, method of disks single plane) and the derivation (SCT median, minimum,
maximum over the beats). The EF's quality-control verdict is a coded qualitative evaluation
(private scheme 99SONOLOOP) with the number of implausible frames. Volumes and areas are
written only when the image is calibrated and the EF is reliable; the EF, a ratio, is
written whenever it is reliable, and never when it is not.
"""

from __future__ import annotations

import warnings

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

ECHOCARDIOGRAPHY = Code("40701008", "SCT", "Echocardiography")
AREA_LENGTH = Code("125205", "DCM", "Area-Length Single Plane")
DISKS = Code("125208", "DCM", "Method of Disks, Single Plane")
EDV = Code("18026-5", "LN", "Left Ventricular End Diastolic Volume")
ESV = Code("18148-7", "LN", "Left Ventricular End Systolic Volume")
EF = Code("18043-0", "LN", "Left Ventricular Ejection Fraction by US")
LV_DIASTOLIC_AREA = Code("399109006", "SCT", "Left Ventricular Diastolic Area")
LV_SYSTOLIC_AREA = Code("399030000", "SCT", "Left Ventricular Systolic Area")
LA_VOLUME = Code("399235004", "SCT", "Left Atrium Systolic Volume")
LEFT_VENTRICLE = Code("87878005", "SCT", "Left ventricle")
LEFT_ATRIUM = Code("82471001", "SCT", "Left atrium")
ML = Code("ml", "UCUM", "milliliter")
CM2 = Code("cm2", "UCUM", "square centimeter")
PERCENT = Code("%", "UCUM", "percent")
FRAMES = Code("{frames}", "UCUM", "frames")
MEDIAN = Code("373099004", "SCT", "Median")
MINIMUM = Code("255605001", "SCT", "Minimum")
MAXIMUM = Code("56851009", "SCT", "Maximum")

# Sonoloop's own quality-control concepts (a private coding scheme: no standard code says
# "this EF is (un)reliable, and why")
SCHEME = "99SONOLOOP"
EF_QUALITY = Code("EFQC", SCHEME, "Ejection fraction quality control")
IMPLAUSIBLE_FRAMES = Code("IMPLFR", SCHEME, "Frames with an implausible segmentation")
RELIABLE = Code("RELIABLE", SCHEME, "Reliable")
UNRELIABLE = {
    "no_beat": Code("NOBEAT", SCHEME, "No complete heart cycle"),
    "implausible_frames": Code("IMPLAUS", SCHEME, "Too many implausible frames"),
    "no_plausible_beat": Code("NOPLBEAT", SCHEME, "No beat with plausible ED and ES frames"),
    "beats_disagree": Code("BEATDIS", SCHEME, "Beats disagree"),
    "lv_cut_off": Code("LVCUT", SCHEME, "LV cut off by the sector edge"),
    "ef_implausible": Code("EFRANGE", SCHEME, "EF outside the physiological range"),
}


def build_measurement_report(source: Dataset, seg: Dataset, measurements: dict, *, algorithm: tuple[str, str],
                             series_number: int = 950, manufacturer: str = "Sonoloop",
                             device_uid: str | None = None, series_uid: str | None = None,
                             sop_instance_uid: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The report for one analysed loop.

    A reliable EF is written as the median of the beats with their minimum and maximum, the
    volumes and areas of the representative beat beside it; an unreliable one is not written
    at all: the report then says why (one coded reason each) and how many frames were
    implausible, and gives no volumes."""
    reliable = (bool(measurements.get("reliable")) and measurements.get("ef") is not None
                and measurements.get("ed_frame") is not None)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm[0], version=algorithm[1])
    segment_of = {str(s.get("SegmentDescription") or s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    has_beat = measurements.get("ed_frame") is not None
    ed, es = (int(measurements["ed_frame"]) + 1, int(measurements["es_frame"]) + 1) if has_beat else (None, None)
    multi_frame = int(source.get("NumberOfFrames", 1) or 1) > 1
    calibrated = bool(measurements.get("calibrated"))

    def seg_frame(name: str, source_frame: int) -> hd.sr.ReferencedSegmentationFrame:
        """The Segmentation frame holding segment ``name`` on ``source_frame`` of the source."""
        number = segment_of.get(name)
        for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
            reference = item.DerivationImageSequence[0].SourceImageSequence[0]
            if (int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == number
                    and int(reference.get("ReferencedFrameNumber", 1) or 1) == source_frame):
                return hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=k,
                    segment_number=number, source_image=hd.sr.SourceImageForSegmentation(
                        source.SOPClassUID, source.SOPInstanceUID, [source_frame] if multi_frame else None))
        raise ValueError(f"the Segmentation has no {name} frame for source frame {source_frame}")

    def measurement(name, value, unit, method=None):
        return hd.sr.Measurement(name=name, value=round(float(value), 3), unit=unit, method=method,
                                 algorithm_id=algorithm_id)

    def roi_group(label: str, frame: hd.sr.ReferencedSegmentationFrame, site: Code, values: list):
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label),
            referenced_segment=frame, finding_sites=[hd.sr.FindingSite(site)], algorithm_id=algorithm_id,
            measurements=values)

    ejection, evaluations = [], []
    if reliable:
        spread = measurements.get("ef_spread") or {}
        ejection.append(hd.sr.Measurement(name=EF, value=round(float(measurements["ef"]), 3), unit=PERCENT,
                                          method=AREA_LENGTH, derivation=MEDIAN, algorithm_id=algorithm_id))
        for derivation, key in ((MINIMUM, "min"), (MAXIMUM, "max")):
            if spread.get("beats", 0) > 1 and spread.get(key) is not None:
                ejection.append(hd.sr.Measurement(name=EF, value=round(float(spread[key]), 3), unit=PERCENT,
                                                  method=AREA_LENGTH, derivation=derivation,
                                                  algorithm_id=algorithm_id))
        if measurements.get("ef_disks") is not None:
            ejection.append(hd.sr.Measurement(name=EF, value=round(float(measurements["ef_disks"]), 3),
                                              unit=PERCENT, method=DISKS, derivation=MEDIAN,
                                              algorithm_id=algorithm_id))
        evaluations.append(hd.sr.QualitativeEvaluation(EF_QUALITY, RELIABLE))
    else:
        evaluations += [hd.sr.QualitativeEvaluation(EF_QUALITY, UNRELIABLE[reason])
                        for reason in measurements.get("reliability_reasons") or ["no_beat"] if reason in UNRELIABLE]
    if measurements.get("implausible_frames") is not None:
        ejection.append(measurement(IMPLAUSIBLE_FRAMES, measurements["implausible_frames"], FRAMES))
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="LV ejection fraction"),
        finding_sites=[hd.sr.FindingSite(LEFT_VENTRICLE)], algorithm_id=algorithm_id, measurements=ejection,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID,
                                                            [ed, es] if multi_frame and has_beat else None)],
    )]
    if calibrated and reliable:
        areas = measurements["areas"]["LV"]
        for label, frame, volume, disks, area, area_code in (
                ("LV at end-diastole", ed, measurements["edv"], measurements.get("edv_disks"), areas[ed - 1],
                 LV_DIASTOLIC_AREA),
                ("LV at end-systole", es, measurements["esv"], measurements.get("esv_disks"), areas[es - 1],
                 LV_SYSTOLIC_AREA)):
            code = EDV if frame == ed else ESV
            values = [measurement(code, volume, ML, AREA_LENGTH), measurement(area_code, area, CM2)]
            if disks is not None:
                values.insert(1, measurement(code, disks, ML, DISKS))
            groups.append(roi_group(label, seg_frame("LV", frame), LEFT_VENTRICLE, values))
        if measurements.get("la_volume") is not None and "LA" in segment_of:
            groups.append(roi_group("LA at end-systole", seg_frame("LA", es), LEFT_ATRIUM,
                                    [measurement(LA_VOLUME, measurements["la_volume"], ML, AREA_LENGTH)]))
    observer = hd.sr.DeviceObserverIdentifyingAttributes(uid=device_uid or generate_uid(), name=manufacturer,
                                                         model_name=f"{algorithm[0]} {algorithm[1]}"[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=Code("121007", "DCM", "Device"), observer_identifying_attributes=observer))
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=ECHOCARDIOGRAPHY,
                                     imaging_measurements=groups)
    with warnings.catch_warnings():
        # patient names are copied as the modality wrote them; highdicom's style advice is not ours to act on
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source, seg], content=report[0], series_instance_uid=series_uid or generate_uid(),
            series_number=series_number, sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=1,
            manufacturer=manufacturer, is_complete=True,
        )
    _drop_segment_numbers_beside_frames(sr)
    return sr


def _drop_segment_numbers_beside_frames(dataset: Dataset) -> None:
    """highdicom 0.28 writes Referenced Segment Number next to Referenced Frame Number in a
    reference to one Segmentation frame; PS3.3 C.18.3 allows the segment number only when
    no frame number is given (the frame already identifies its segment)."""
    for element in dataset:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if "ReferencedFrameNumber" in item and "ReferencedSegmentNumber" in item:
                del item.ReferencedSegmentNumber
            _drop_segment_numbers_beside_frames(item)
