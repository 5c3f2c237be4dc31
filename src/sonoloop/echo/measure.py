"""Echo measurements from label maps (pure NumPy): areas, ED/ES, LV volumes, EF, LA volume.

Methods (ASE/EACVI chamber quantification, Lang et al. 2015):

* area per frame: pixel count × physical pixel area;
* the LV long axis: from the midpoint of the mitral annulus (where the LV cavity touches the
  LA, else the base of the cavity) to the apex (the cavity point farthest from it);
* single-plane area–length volume ``V = 8 A² / (3 π L)``;
* method of disks: 20 disks perpendicular to the long axis, ``V = π/4 Σ d_i² · L/20``
  (single plane) or ``π/4 Σ a_i b_i · L/20`` with ``L`` the longer of the two views (biplane,
  apical 4- and 2-chamber at the same phase);
* ED/ES: ED at the R wave when the DICOM gives R-wave times, else at each maximum of the
  smoothed LV-area curve (one per heart cycle); ES at the smallest smoothed LV area between one
  ED and the next;
* EF = (EDV − ESV) / EDV per beat; the reported EF is the median over the beats whose ED and
  ES frames are plausible, with the spread of the beats; LA volume by area–length at
  end-systole (LA maximal);
* reliability: an EF is reported as reliable only when the loop holds a beat, few frames are
  implausible, the beats agree, the LV is not cut off and the EF is physiological; otherwise
  the verdict says why, and no EF is reported (``ef`` is None, the beats keep their values).

Units come from the calibration (Sequence of Ultrasound Regions): cm, cm², mL. Without a
calibration every value is in pixel units and the result says so; millimetres are never
guessed. Implausible results are flagged, not hidden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from sonoloop.dicom.regions import imaging_region

DISKS = 20
SHORTEST_CYCLE_MS = 333.0  # 180 beats per minute
EF_PLAUSIBLE = (5.0, 90.0)  # %
# Quality control of the reported EF (the reasons are in RELIABILITY_REASONS)
IMPLAUSIBLE_FRAMES_MAX = 0.10  # share of the loop's frames
BEAT_EF_RANGE_MAX = 15.0  # EF points between the highest and lowest beat (sinus rhythm: SD ≈ 3–5)
LV_CUT_OFF_MAX = 0.10  # share of the LV border on the sector or image edge at end-diastole

RELIABILITY_REASONS = {
    "no_beat": "the loop holds no complete heart cycle",
    "implausible_frames": "too many frames with an implausible segmentation",
    "no_plausible_beat": "no beat whose end-diastole and end-systole frames are plausible",
    "beats_disagree": "the beats' ejection fractions disagree",
    "lv_cut_off": "the LV is cut off by the edge of the sector or image",
    "ef_implausible": "the ejection fraction is outside the physiological range",
}


@dataclass(frozen=True)
class Calibration:
    """Physical size of one pixel; ``unit`` is "cm" or "px" (uncalibrated)."""

    dx: float = 1.0
    dy: float = 1.0
    unit: str = "px"

    @property
    def calibrated(self) -> bool:
        return self.unit == "cm"

    @property
    def units(self) -> dict[str, str]:
        if self.calibrated:
            return {"length": "cm", "area": "cm2", "volume": "mL"}
        return {"length": "px", "area": "px2", "volume": "px3"}

    @classmethod
    def from_regions(cls, regions, height: int | None = None, width: int | None = None) -> Calibration:
        """From a DICOM Sequence of Ultrasound Regions: the calibration of the imaging region
        (``dicom.regions.imaging_region``, the one the model's crop comes from) when it is in
        centimetres on both axes; otherwise uncalibrated."""
        region = imaging_region(regions, height, width)
        if region is None or not region.in_centimetres:
            return cls()
        return cls(region.dx, region.dy, "cm")


@dataclass
class Axis:
    base: tuple[float, float]  # physical (y, x) of the mitral annulus midpoint
    apex: tuple[float, float]
    length: float


def _points(mask: np.ndarray, calibration: Calibration) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.stack([rows * calibration.dy, cols * calibration.dx], axis=1).astype(np.float64)


def long_axis(cavity: np.ndarray, atrium: np.ndarray | None, calibration: Calibration) -> Axis | None:
    """The long axis of a chamber: base at the middle of its border with ``atrium`` (the
    mitral annulus), apex at the cavity point farthest from the base."""
    if not cavity.any():
        return None
    points = _points(cavity, calibration)
    base = None
    if atrium is not None and atrium.any():
        grown = np.zeros_like(atrium, dtype=bool)
        grown[1:] |= atrium[:-1]
        grown[:-1] |= atrium[1:]
        grown[:, 1:] |= atrium[:, :-1]
        grown[:, :-1] |= atrium[:, 1:]
        border = cavity & grown
        if border.sum() >= 2:
            base = _points(border, calibration).mean(axis=0)
    if base is None:
        # no neighbouring atrium: the base is the middle of the cavity's widest end along
        # its principal axis
        centre = points.mean(axis=0)
        _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
        t = (points - centre) @ vt[0]
        caps = [(t >= np.quantile(t, 0.95), t.max()), (t <= np.quantile(t, 0.05), t.min())]
        widths = [np.ptp((points[cap] - centre) @ vt[1]) for cap, _ in caps]
        cap, end = caps[int(np.argmax(widths))]
        # the middle of the wider cap, moved along the axis onto the cavity's end
        base = points[cap].mean(axis=0) + (end - t[cap].mean()) * vt[0]
    distances = np.linalg.norm(points - base, axis=1)
    apex = points[int(np.argmax(distances))]
    return Axis((float(base[0]), float(base[1])), (float(apex[0]), float(apex[1])), float(distances.max()))


def disk_diameters(cavity: np.ndarray, axis: Axis, calibration: Calibration, disks: int = DISKS) -> np.ndarray:
    """Width of the cavity across the long axis at the middle of each of ``disks`` slabs:
    the area of a one-pixel-thick band there divided by its thickness."""
    points = _points(cavity, calibration)
    base, apex = np.array(axis.base), np.array(axis.apex)
    direction = (apex - base) / max(axis.length, 1e-9)
    along = (points - base) @ direction  # 0 at the base, length at the apex
    band = max(calibration.dx, calibration.dy)
    pixel_area = calibration.dx * calibration.dy
    middles = (np.arange(disks) + 0.5) * axis.length / disks
    return np.array([np.count_nonzero(np.abs(along - m) < band / 2) * pixel_area / band for m in middles])


def area_length_volume(area: float, length: float) -> float:
    return 8.0 * area ** 2 / (3.0 * np.pi * length) if length > 0 else float("nan")


def disks_volume(diameters_a: np.ndarray, length: float, diameters_b: np.ndarray | None = None) -> float:
    b = diameters_a if diameters_b is None else diameters_b
    return float(np.pi / 4.0 * np.sum(diameters_a * b) * length / len(diameters_a))


@dataclass
class Beat:
    ed: int  # 0-based frame indices
    es: int


def cycle_length(area: np.ndarray, frame_time_ms: float | None = None) -> int | None:
    """The heart cycle in frames, from the autocorrelation of the LV area: the lag between
    0.33 s and 2 s (heart rates 180 to 30 per minute) where the curve best repeats itself;
    None when the loop holds less than two clear cycles."""
    n = len(area)
    shortest, longest = (round(333 / frame_time_ms), round(2000 / frame_time_ms)) if frame_time_ms else (5, n)
    shortest, longest = max(shortest, 3), min(longest, n // 2)
    if longest <= shortest:
        return None
    x = area - area.mean()
    if not np.any(x):
        return None
    correlation = np.correlate(x, x, mode="full")[n - 1:] / float(np.dot(x, x))
    correlation *= n / (n - np.arange(n))  # unbiased: fewer overlapping samples at long lags
    lags = np.arange(shortest, longest + 1)
    peaks = [lag for lag in lags if correlation[lag] >= correlation[lag - 1] and correlation[lag] >= correlation[lag + 1]]
    if not peaks:
        return None
    top = max(correlation[lag] for lag in peaks)
    if top < 0.5:
        return None
    # the shortest lag that clearly repeats: the cycle, not a multiple of it (beat-to-beat
    # variation, e.g. with breathing, can make two cycles repeat better than one)
    return int(next(lag for lag in peaks if correlation[lag] >= max(0.5, 0.6 * top)))


def _peaks(values: np.ndarray, distance: int) -> list[int]:
    """Local maxima, the highest first, none closer than ``distance`` to a higher one."""
    n = len(values)
    candidates = [i for i in range(n) if values[i] >= values[max(0, i - 1): i + 2].max()]
    chosen: list[int] = []
    for i in sorted(candidates, key=lambda j: -values[j]):
        if all(abs(i - j) >= distance for j in chosen):
            chosen.append(i)
    return sorted(chosen)


def smooth_curve(values, sigma: float = 1.0) -> np.ndarray:
    """A Gaussian smoothing of a per-frame curve (``sigma`` in frames), edges reflected."""
    x = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(x) < 3:
        return x.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(x, radius, mode="reflect" if len(x) > radius else "edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def _nearest_extreme(values: np.ndarray, at: int, which, low: int = 0, high: int | None = None) -> int:
    """The frame within one of ``at`` (and within [low, high)) where ``values`` is highest
    (``which=max``) or lowest (``min``): the smoothed curve places the phase, the frame's own
    segmentation decides between neighbours."""
    high = len(values) if high is None else high
    candidates = range(max(low, at - 1), min(high, at + 2))
    return which(candidates, key=lambda j: values[j]) if candidates else at


def cardiac_phases(lv_area: np.ndarray, r_wave_frames: list[int] | None = None,
                   frame_time_ms: float | None = None) -> list[Beat]:
    """ED/ES pairs from the LV-area curve smoothed over about one frame (σ = 1), so that a
    single noisy frame cannot become an end-diastole or end-systole. ED at each R wave when
    the ECG is known; otherwise at the largest smoothed LV area of each heart cycle (peaks at
    least 0.7 cycle apart, the cycle from the loop's own periodicity, or the whole loop when it
    holds less than two cycles). ES at the smallest smoothed area before the next ED. A last
    beat cut off by the end of the loop is left out."""
    area = np.asarray(lv_area, dtype=np.float64)
    n = len(area)
    if n < 3 or not np.any(area > 0):
        return []
    if frame_time_ms and n * frame_time_ms < SHORTEST_CYCLE_MS:
        return []  # shorter than any heart cycle
    smooth = smooth_curve(area, 1.0)
    cycle = cycle_length(smooth, frame_time_ms)
    if r_wave_frames:
        eds = sorted({f for f in r_wave_frames if 0 <= f < n})
    else:
        eds = _peaks(smooth, max(3, round(0.7 * cycle)) if cycle else n)
        inner = [smooth[e] for e in eds if 0 < e < n - 1]
        if eds and eds[0] == 0 and inner and smooth[0] < 0.9 * float(np.median(inner)):
            eds = eds[1:]  # the loop starts on a falling curve (in systole), not at end-diastole
        eds = sorted({_nearest_extreme(area, e, max) for e in eds})
    beats = []
    for k, ed in enumerate(eds):
        end = eds[k + 1] if k + 1 < len(eds) else n
        if end == n and cycle and n - ed < 0.45 * cycle:
            continue  # the loop ends before this beat's systole does
        if end - ed < 3:
            continue
        es = _nearest_extreme(area, ed + int(np.argmin(smooth[ed:end])), min, low=ed + 1, high=end)
        if es == n - 1:
            continue  # the smallest area on the last frame: the loop may end before end-systole
        if es > ed and smooth[es] < smooth[ed]:
            beats.append(Beat(ed, es))
    return beats


@dataclass
class Measurements:
    frames: int
    units: dict[str, str]
    calibrated: bool
    areas: dict[str, list[float]]  # per structure, per frame
    lv_length: list[float]
    beats: list[dict] = field(default_factory=list)  # per beat: ed, es, volumes, EF
    ed_frame: int | None = None  # 0-based, of the beat reported
    es_frame: int | None = None
    edv: float | None = None  # area–length, mL (or px³)
    esv: float | None = None
    ef: float | None = None  # %
    edv_disks: float | None = None
    esv_disks: float | None = None
    ef_disks: float | None = None
    la_volume: float | None = None
    ef_spread: dict | None = None  # over the beats used: min, max, range, sd (EF points), beats
    implausible_frames: int | None = None  # frames whose segmentation fails a plausibility criterion
    reliable: bool = False  # whether ``ef`` may be reported (reasons say why not)
    reliability_reasons: list[str] = field(default_factory=list)  # keys of RELIABILITY_REASONS
    reliability: str = ""  # the verdict in words
    flags: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def drawn_box(masks: np.ndarray, margin: int = 2) -> tuple[slice, slice] | None:
    """The rows and columns that hold anything of (N, H, W) ``masks`` in any frame, ``margin``
    pixels wider (within the image); None when nothing is drawn."""
    anywhere = masks.any(axis=0)
    rows, cols = np.flatnonzero(anywhere.any(axis=1)), np.flatnonzero(anywhere.any(axis=0))
    if not rows.size:
        return None
    return (slice(max(0, rows[0] - margin), rows[-1] + margin + 1),
            slice(max(0, cols[0] - margin), cols[-1] + margin + 1))


def measure_loop(labels: np.ndarray, classes: list[str], calibration: Calibration,
                 r_wave_frames: list[int] | None = None, frame_time_ms: float | None = None,
                 problems: list[list[str]] | None = None, lv_cut_off: list[float] | None = None) -> Measurements:
    """Measurements of one apical view, from label maps (N, H, W) of its frames.

    ``problems``: per frame, the plausibility criteria its segmentation fails
    (``echo.quality``); ``lv_cut_off``: per frame, the share of the LV border on the sector or
    image edge. Both feed the reliability verdict; without them every frame counts as plausible.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    box = drawn_box(labels > 0)
    if box is not None:  # areas, axes and disks do not depend on where the heart is: measure in its box
        labels = labels[(slice(None), *box)]
    problems = problems if problems is not None else [[] for _ in labels]
    index = {name: i for i, name in enumerate(classes)}
    pixel_area = calibration.dx * calibration.dy
    areas = {name: [float((frame == index[name]).sum() * pixel_area) for frame in labels]
             for name in ("LV", "MYO", "LA") if name in index}
    flags = []
    if not calibration.calibrated:
        flags.append("no physical calibration in the DICOM (Sequence of Ultrasound Regions): values in pixels")
    for name, values in areas.items():
        missing = sum(1 for v in values if v == 0)
        if missing == len(values):
            flags.append(f"{name} not found in any frame")
        elif missing:
            flags.append(f"{name} missing in {missing} of {len(values)} frames")
    lv, la = index.get("LV"), index.get("LA")
    axes = [long_axis(frame == lv, frame == la if la is not None else None, calibration) if lv is not None else None
            for frame in labels]
    implausible = sum(1 for p in problems if p)
    result = Measurements(frames=len(labels), units=calibration.units, calibrated=calibration.calibrated,
                          areas={k: [round(v, 4) for v in vs] for k, vs in areas.items()},
                          lv_length=[round(a.length, 4) if a else 0.0 for a in axes], flags=flags,
                          implausible_frames=implausible)
    if "LV" not in areas or len(labels) < 2:
        if len(labels) < 2:
            result.flags.append("a single frame: no ED/ES, volumes or EF")
        _verdict(result, ["no_beat"])
        return result

    for beat in cardiac_phases(np.array(areas["LV"]), r_wave_frames, frame_time_ms):
        ed_axis, es_axis = axes[beat.ed], axes[beat.es]
        if ed_axis is None or es_axis is None:
            continue
        edv = area_length_volume(areas["LV"][beat.ed], ed_axis.length)
        esv = area_length_volume(areas["LV"][beat.es], es_axis.length)
        edv_d = disks_volume(disk_diameters(labels[beat.ed] == lv, ed_axis, calibration), ed_axis.length)
        esv_d = disks_volume(disk_diameters(labels[beat.es] == lv, es_axis, calibration), es_axis.length)
        entry = {"ed": beat.ed, "es": beat.es, "edv": edv, "esv": esv, "ef": 100.0 * (edv - esv) / edv,
                 "edv_disks": edv_d, "esv_disks": esv_d, "ef_disks": 100.0 * (edv_d - esv_d) / edv_d,
                 "plausible": not problems[beat.ed] and not problems[beat.es]}
        if la is not None and areas["LA"][beat.es] > 0:
            la_axis = long_axis(labels[beat.es] == la, labels[beat.es] == lv, calibration)
            entry["la_volume"] = area_length_volume(areas["LA"][beat.es], la_axis.length) if la_axis else None
        result.beats.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in entry.items()})
    if not result.beats:
        result.flags.append("no cardiac cycle found (the LV area does not rise and fall): no ED/ES, volumes or EF")
        _verdict(result, ["no_beat"])
        return result
    used = [b for b in result.beats if b["plausible"]] or result.beats
    # the reported values: the median of the beats (ASE: several beats, robust to one odd beat)
    for key in ("edv", "esv", "ef", "edv_disks", "esv_disks", "ef_disks", "la_volume"):
        values = [b[key] for b in used if b.get(key) is not None]
        if values:
            setattr(result, key, round(float(np.median(values)), 3))
    efs = np.array([b["ef"] for b in used])
    result.ef_spread = {"beats": len(used), "min": round(float(efs.min()), 2), "max": round(float(efs.max()), 2),
                        "range": round(float(np.ptp(efs)), 2), "sd": round(float(efs.std(ddof=1)), 2) if len(efs) > 1 else 0.0}
    representative = min(used, key=lambda b: abs(b["ef"] - result.ef))  # the beat the SEG and SR point to
    result.ed_frame, result.es_frame = representative["ed"], representative["es"]
    for key in ("ef", "ef_disks"):
        value = getattr(result, key)
        if value is not None and not EF_PLAUSIBLE[0] <= value <= EF_PLAUSIBLE[1]:
            result.flags.append(f"{'EF' if key == 'ef' else 'EF (disks)'} {value:.0f} % is outside the plausible "
                                f"{EF_PLAUSIBLE[0]:.0f}–{EF_PLAUSIBLE[1]:.0f} %")
    reasons = []
    if implausible > IMPLAUSIBLE_FRAMES_MAX * len(labels):
        reasons.append("implausible_frames")
    if not any(b["plausible"] for b in result.beats):
        reasons.append("no_plausible_beat")
    if len(efs) > 1 and float(np.ptp(efs)) > BEAT_EF_RANGE_MAX:
        reasons.append("beats_disagree")
    if lv_cut_off is not None and max(lv_cut_off[b["ed"]] for b in used) > LV_CUT_OFF_MAX:
        reasons.append("lv_cut_off")
    if not EF_PLAUSIBLE[0] <= result.ef <= EF_PLAUSIBLE[1]:
        reasons.append("ef_implausible")
    _verdict(result, reasons)
    return result


def _verdict(result: Measurements, reasons: list[str]) -> None:
    """Set the reliability verdict; an unreliable loop reports no EF (its beats keep theirs)."""
    result.reliability_reasons = reasons
    result.reliable = not reasons
    if result.reliable:
        spread = result.ef_spread or {}
        result.reliability = (f"reliable: EF {result.ef:.0f} % (median of {spread.get('beats', 1)} beat(s), "
                              f"range {spread.get('min', result.ef):.0f}–{spread.get('max', result.ef):.0f} %), "
                              f"{result.implausible_frames or 0} of {result.frames} frames implausible")
        return
    details = []
    for reason in reasons:
        text = RELIABILITY_REASONS[reason]
        if reason == "implausible_frames":
            text += f" ({result.implausible_frames} of {result.frames})"
        elif reason == "beats_disagree" and result.ef_spread:
            text += f" ({result.ef_spread['min']:.0f}–{result.ef_spread['max']:.0f} %)"
        elif reason == "ef_implausible" and result.ef is not None:
            text += f" ({result.ef:.0f} %)"
        details.append(text)
    result.reliability = "unreliable, no EF reported: " + "; ".join(details)
    result.ef = result.ef_disks = None


def biplane_volumes(four_chamber: tuple[np.ndarray, np.ndarray], two_chamber: tuple[np.ndarray, np.ndarray],
                    classes: list[str], calibration4: Calibration, calibration2: Calibration) -> dict:
    """EDV, ESV and EF by the biplane method of disks, from the (ED, ES) label maps of an
    apical 4-chamber and an apical 2-chamber loop of the same study."""
    if calibration4.unit != calibration2.unit:
        raise ValueError("one view is calibrated and the other is not: biplane volumes need both in cm")
    lv, la = classes.index("LV"), classes.index("LA") if "LA" in classes else None
    volumes = {}
    for phase, (a4, a2) in zip(("ed", "es"), zip(four_chamber, two_chamber)):
        axis4 = long_axis(a4 == lv, a4 == la if la is not None else None, calibration4)
        axis2 = long_axis(a2 == lv, a2 == la if la is not None else None, calibration2)
        if axis4 is None or axis2 is None:
            raise ValueError(f"the LV is missing at {phase.upper()} in one of the views")
        length = max(axis4.length, axis2.length)
        d4 = disk_diameters(a4 == lv, axis4, calibration4)
        d2 = disk_diameters(a2 == lv, axis2, calibration2)
        volumes[f"{phase}v"] = round(disks_volume(d4, length, d2), 3)
        volumes[f"{phase}_length_mismatch"] = round(abs(axis4.length - axis2.length) / length, 3)
    volumes["ef"] = round(100.0 * (volumes["edv"] - volumes["esv"]) / volumes["edv"], 2)
    volumes["units"] = calibration4.units["volume"]
    flags = []
    if max(volumes["ed_length_mismatch"], volumes["es_length_mismatch"]) > 0.2:
        flags.append("long axes of the two views differ by more than 20 %: foreshortening likely")
    if not EF_PLAUSIBLE[0] <= volumes["ef"] <= EF_PLAUSIBLE[1]:
        flags.append(f"EF {volumes['ef']:.0f} % is outside the plausible {EF_PLAUSIBLE[0]:.0f}–{EF_PLAUSIBLE[1]:.0f} %")
    volumes["flags"] = flags
    return volumes


def r_wave_frames(r_wave_times_ms, frame_times_ms) -> list[int]:
    """Frames nearest each R-wave time (DICOM R Wave Time Vector vs frame times)."""
    frame_times = np.asarray(frame_times_ms, dtype=np.float64)
    if frame_times.size == 0:
        return []
    return sorted({int(np.argmin(np.abs(frame_times - t))) for t in r_wave_times_ms
                   if frame_times[0] - 1 <= t <= frame_times[-1] + 1})


def frame_times(header) -> list[float] | None:
    """Start time of each frame in ms from Frame Time or the Frame Time Vector."""
    frames = int(header.get("NumberOfFrames", 1) or 1)
    vector = header.get("FrameTimeVector")
    if vector is not None and len(vector) == frames:
        return list(np.cumsum([float(v) for v in vector]))
    frame_time = header.get("FrameTime")
    if frame_time:
        return [n * float(frame_time) for n in range(frames)]
    return None
