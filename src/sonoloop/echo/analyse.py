"""The echo pipeline, one entry point for the worker, `sonoloop predict` and the benchmarks:
frames → labels (temporally consistent) → plausibility and repair → DICOM SEG → measurements
with an EF verdict → SR. No Django here: the caller stores what comes back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import ndimage

from sonoloop.dicom.views import apical_view
from sonoloop.ml.preprocess import Box, loop_box, region_box, to_gray

from . import quality
from .measure import Calibration, Measurements, drawn_box, frame_times, measure_loop, r_wave_frames

log = logging.getLogger("sonoloop.echo")

LV_JUMP_MAX = 0.15  # a frame's LV area against the median of its ±2 neighbours (relative)
REPAIR_GAP = 3  # frames: how far a repair looks for plausible neighbours


@dataclass(frozen=True)
class PipelineSettings:
    """``temporal_sigma_ms``: Gaussian smoothing of class probabilities along time, in
    milliseconds (0: off), so that loops recorded at 30 and at 80 frames/s are smoothed over
    the same stretch of the heart cycle; ``repair``: implausible frames rebuilt from their
    plausible neighbours.

    50 ms is 1.5 frames at 30 frames/s. Measured on pydicom-data's 120-frame loop
    (benchmarks/consistency.py): σ = 1 frame left 0.52 of the frame-by-frame LV-area noise,
    1.5 frames 0.40, 2 frames 0.35; each step also lowers the EF a little (59.6, 58.1, 56.2 %
    against 61.9 % frame by frame, whose noisy extremes inflate it), so the smoothing stops
    where the noise is well below half."""

    temporal_sigma_ms: float = 50.0
    repair: bool = True

    def sigma_frames(self, frame_time_ms: float | None) -> float:
        """The smoothing in frames for a loop with this frame time (unknown: 30 frames/s)."""
        if self.temporal_sigma_ms <= 0:
            return 0.0
        return self.temporal_sigma_ms / (frame_time_ms if frame_time_ms and frame_time_ms > 0
                                         else ASSUMED_FRAME_TIME_MS)

    def as_dict(self, frame_time_ms: float | None = None) -> dict:
        return {"temporal_sigma_ms": self.temporal_sigma_ms,
                "temporal_sigma_frames": round(self.sigma_frames(frame_time_ms), 3),
                "repair": self.repair}


ASSUMED_FRAME_TIME_MS = 1000 / 30  # when a loop says nothing about its timing

# What the worker did until issue 11, kept for before/after measurements (benchmarks/consistency.py)
FRAME_BY_FRAME = PipelineSettings(temporal_sigma_ms=0.0, repair=False)


@dataclass(frozen=True)
class DicomOutputs:
    """Who made the SEG and SR, and where they go in the study."""

    algorithm_name: str
    algorithm_version: str
    device: object  # sonoloop.dicom.seg.Device
    seg_series_number: int = 900
    sr_series_number: int = 950
    description: str | None = None
    device_uid: str | None = None
    # the same seed gives the same SEG and SR UIDs: a run repeated after a crash replaces
    # what the first one stored instead of leaving orphan objects beside it
    uid_seed: str | None = None

    def uid(self, part: str) -> str | None:
        if not self.uid_seed:
            return None
        from pydicom.uid import generate_uid

        return generate_uid(entropy_srcs=[self.uid_seed, part])


@dataclass
class EchoAnalysis:
    labels: np.ndarray  # (N, H, W) uint8, the model's class indices
    measurements: dict  # Measurements.as_dict() + header facts + quality + timings
    segmentation: object | None = None  # pydicom Dataset
    report: object | None = None
    seconds: dict = field(default_factory=dict)


class PipelineError(ValueError):
    """A loop that cannot be analysed; the message says why."""


def analyse_loop(frames: np.ndarray, header, bits_stored: int, segmenter, *,
                 settings: PipelineSettings = PipelineSettings(), outputs: DicomOutputs | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_segmentation: Callable[[object], None] | None = None) -> EchoAnalysis:
    """Every frame of one loop through ``segmenter`` (an ``ml.infer.Segmenter``), made
    consistent over time, checked, measured, and (with ``outputs``) written as SEG and SR.

    The SEG is built as soon as the label maps are final (after the checks and repairs),
    before the measurements and the SR, and handed to ``on_segmentation``: a caller that
    stores it there makes the segmentation visible while the numbers are still being made
    (the measurements and the SR took ~0.3–0.5 s of a 120-frame loop). Whatever that
    callback raises ends the analysis.

    Raises ``ml.preprocess.FrameError`` for a frame that cannot be segmented."""
    began = time.monotonic()
    classes = list(segmenter.classes)
    box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
    if box is None and len(frames) > 1:
        box = loop_box(frames, bits_stored)
    frame_time = _frame_time(header)
    labels = segmenter.predict(frames, box, bits_stored=bits_stored, on_progress=on_progress,
                               temporal_sigma=settings.sigma_frames(frame_time))
    inference = time.monotonic() - began
    sector = loop_sector(frames, bits_stored, box)

    problems = loop_check(labels, classes, sector)
    before = sum(1 for p in problems if p)
    repaired: list[int] = []
    if settings.repair and before:
        labels, problems, repaired = repair(labels, classes, problems, sector, segmenter)
    segmentation, seg_flags = None, []
    if outputs is not None:
        segmentation, seg_flags = _segmentation(labels, header, classes, outputs)
        if segmentation is not None and on_segmentation is not None:
            on_segmentation(segmentation)
    measured = True
    try:
        measurements = measure(labels, classes, header, problems, lv_cut_off(labels, classes, sector))
    except Exception as exc:  # the segmentation is still worth keeping: say what is missing
        log.exception("measuring a loop of %d frames failed", len(labels))
        measurements = no_measurements(len(labels), f"the measurements could not be made "
                                                    f"({type(exc).__name__}: {exc})")
        measurements["implausible_frames"] = sum(1 for p in problems if p)
        measured = False
    lv_area = measurements["areas"].get("LV", [])
    measurements["quality"] = {
        "implausible_frames": measurements["implausible_frames"],
        "implausible_before_repair": before,
        "repaired_frames": repaired,
        "problems": {str(i): p for i, p in enumerate(problems) if p},
        "lv_area_noise": round(quality.curve_noise(lv_area), 4),
        "pipeline": settings.as_dict(frame_time),
    }
    measurements.setdefault("flags", []).extend(seg_flags)
    analysis = EchoAnalysis(labels, measurements, segmentation)
    if segmentation is not None and measured:
        _report(analysis, header, outputs)
    analysis.seconds = {"inference": round(inference, 2), "total": round(time.monotonic() - began, 2)}
    measurements["inference_seconds"] = analysis.seconds["inference"]
    return analysis


def loop_sector(frames: np.ndarray, bits_stored: int, box: Box | None) -> np.ndarray:
    """The loop's imaging sector in frame geometry, inside the crop box the model saw."""
    picks = np.linspace(0, len(frames) - 1, num=min(16, len(frames))).round().astype(int)
    brightest = np.max([to_gray(frames[i], bits_stored) for i in picks], axis=0)
    sector = quality.sector_mask(brightest)
    if box is not None:
        inside = np.zeros_like(sector)
        inside[box.top: box.bottom, box.left: box.right] = True
        sector &= inside
    return sector


def loop_check(labels: np.ndarray, classes: list[str], sector: np.ndarray | None) -> list[list[str]]:
    """Per frame, the failed plausibility criteria: the anatomical ones (``echo.quality``) and
    a temporal one — the LV area jumping against the frame's neighbours."""
    problems = quality.loop_problems(labels, classes, sector)
    if "LV" in classes and len(labels) >= 5:
        area = (labels == classes.index("LV")).sum(axis=(1, 2)).astype(np.float64)
        for i in range(len(labels)):
            neighbours = np.concatenate([area[max(0, i - 2): i], area[i + 1: i + 3]])
            reference = float(np.median(neighbours))
            if reference > 0 and abs(area[i] - reference) > LV_JUMP_MAX * reference:
                problems[i].append("lv_jump")
    return problems


def repair(labels: np.ndarray, classes: list[str], problems: list[list[str]], sector, segmenter
           ) -> tuple[np.ndarray, list[list[str]], list[int]]:
    """Rebuild each implausible frame from the nearest plausible frames before and after it
    (within REPAIR_GAP): a per-pixel vote of their label maps weighted by closeness in time,
    post-processed like any prediction. A rebuilt frame is kept only if it fails fewer criteria
    than the original (checked again with its neighbours)."""
    labels = labels.copy()
    plausible = [not p for p in problems]
    candidates = {}
    for i, ok in enumerate(plausible):
        if ok:
            continue
        before = next((j for j in range(i - 1, max(-1, i - 1 - REPAIR_GAP), -1) if plausible[j]), None)
        after = next((j for j in range(i + 1, min(len(labels), i + 1 + REPAIR_GAP)) if plausible[j]), None)
        if before is None and after is None:
            continue
        votes = np.zeros((len(classes),) + labels.shape[1:], dtype=np.float32)
        for j in (before, after):
            if j is not None:
                weight = 1.0 / abs(i - j)
                for c in range(len(classes)):
                    votes[c] += weight * (labels[j] == c)
        candidates[i] = segmenter.postprocess(votes.argmax(0).astype(np.uint8))
    if not candidates:
        return labels, problems, []
    trial = labels.copy()
    for i, candidate in candidates.items():
        trial[i] = candidate
    rechecked = loop_check(trial, classes, sector)
    repaired = []
    for i in candidates:
        if len(rechecked[i]) < len(problems[i]):
            labels[i] = trial[i]
            repaired.append(i)
    final = loop_check(labels, classes, sector)
    return labels, final, repaired


def lv_cut_off(labels: np.ndarray, classes: list[str], sector: np.ndarray | None) -> list[float] | None:
    """Per frame, the share of the LV border that lies on the sector's (or image's) edge."""
    if "LV" not in classes or sector is None or not sector.any():
        return None
    edge = ~ndimage.binary_erosion(sector, iterations=2, border_value=0)
    lv = classes.index("LV")
    box = drawn_box(labels == lv)
    if box is None:
        return [0.0] * len(labels)
    labels, edge = labels[(slice(None), *box)], edge[box]  # the same borders: the box keeps 2 px around the LV
    shares = []
    for frame in labels:
        mask = frame == lv
        border = mask & ~ndimage.binary_erosion(mask, border_value=0)
        shares.append(float((border & edge).sum() / border.sum()) if border.any() else 0.0)
    return shares


def _frame_time(header) -> float | None:
    """The time between the first two frames in ms, when the header says."""
    times = frame_times(header)
    return float(times[1] - times[0]) if times and len(times) > 1 else None


def measure(labels: np.ndarray, classes: list[str], header, problems: list[list[str]] | None = None,
            cut_off: list[float] | None = None) -> dict:
    """``measure_loop`` with what the header says: calibration, R waves, frame times, view."""
    # the region the model read the loop from (analyse_loop's crop) is the one measured in
    calibration = Calibration.from_regions(header.get("SequenceOfUltrasoundRegions"),
                                           labels.shape[1], labels.shape[2])
    r_waves = None
    times = frame_times(header)
    if header.get("RWaveTimeVector") and times:
        r_waves = r_wave_frames([float(t) for t in header.RWaveTimeVector], times)
    frame_time = _frame_time(header)
    result = measure_loop(labels, classes, calibration, r_waves, frame_time, problems, cut_off).as_dict()
    result["ed_es_source"] = "R waves (ECG)" if r_waves else "LV area"
    result["frame_times_ms"] = times
    result["calibration"] = {"dx": calibration.dx, "dy": calibration.dy, "unit": calibration.unit}
    result["view"] = apical_view(header)
    return result


def rehearse_outputs(classes: list[str]) -> EchoAnalysis:
    """The measurements, SEG and SR of a small synthetic two-frame loop, built and not kept.
    highdicom reads its standard's tables when it first builds an object (0.5 s here): a
    worker that rehearses when it starts does not pay that inside its first job."""
    from pydicom.dataset import Dataset
    from pydicom.uid import UltrasoundMultiFrameImageStorage, generate_uid

    from sonoloop.dicom.seg import Device

    header = Dataset()
    header.SOPClassUID = UltrasoundMultiFrameImageStorage
    header.SOPInstanceUID, header.StudyInstanceUID, header.SeriesInstanceUID = (generate_uid() for _ in range(3))
    header.PatientID, header.PatientName = "REHEARSAL", "Rehearsal"
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber"):
        setattr(header, keyword, None)
    header.Modality = "US"
    header.Rows = header.Columns = 32
    header.NumberOfFrames = 2
    labels = np.zeros((2, 32, 32), np.uint8)
    for value, (top, bottom) in enumerate(((4, 12), (12, 20), (20, 28)), start=1):
        if value < len(classes):
            labels[:, top:bottom, 8:24] = value
    outputs = DicomOutputs("rehearsal", "0", Device())
    segmentation, _ = _segmentation(labels, header, classes, outputs)
    analysis = EchoAnalysis(labels, measure(labels, classes, header), segmentation)
    if segmentation is not None:
        _report(analysis, header, outputs)
    return analysis


def no_measurements(frames: int, reason: str) -> dict:
    """What a result records when measuring itself failed."""
    calibration = Calibration()
    result = Measurements(frames=frames, units=calibration.units, calibrated=False, areas={}, lv_length=[],
                          flags=[reason], reliability=f"unreliable, no EF reported: {reason}").as_dict()
    return result


def _segmentation(labels: np.ndarray, header, classes: list[str],
                  outputs: DicomOutputs) -> tuple[object | None, list[str]]:
    """The SEG of the final label maps, or None and the flag that says why there is none."""
    from sonoloop.dicom.seg import Algorithm, SegmentationError, build_segmentation

    try:
        return build_segmentation(
            header, labels, classes, Algorithm(outputs.algorithm_name, outputs.algorithm_version),
            series_number=outputs.seg_series_number, device=outputs.device, description=outputs.description,
            series_uid=outputs.uid("seg series"), sop_instance_uid=outputs.uid("seg")), []
    except SegmentationError as exc:
        return None, [f"no DICOM Segmentation written: {exc}"]


def _report(analysis: EchoAnalysis, header, outputs: DicomOutputs) -> None:
    """The SR of the measurements, referring to the SEG; a flag instead when it cannot be built."""
    from sonoloop.dicom.sr import build_measurement_report

    try:
        analysis.report = build_measurement_report(
            header, analysis.segmentation, analysis.measurements,
            algorithm=(outputs.algorithm_name, outputs.algorithm_version),
            series_number=outputs.sr_series_number, device_uid=outputs.device_uid,
            series_uid=outputs.uid("sr series"), sop_instance_uid=outputs.uid("sr"))
    except Exception as exc:  # the SEG and the measurements stand without it
        analysis.measurements.setdefault("flags", []).append(
            f"no measurement report (SR) written: {type(exc).__name__}: {exc}")
