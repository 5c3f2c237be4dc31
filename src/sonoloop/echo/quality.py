"""Is a segmentation anatomically plausible? Per-frame criteria as data, and the smoothness
of a loop's LV-area curve (pure NumPy/SciPy).

The criteria follow those of Painchaud et al., "Echocardiography segmentation with enforced
temporal consistency" (IEEE TMI 2022) for apical views: each structure present and in one
piece, no holes in the cavities, the myocardium bordering the LV cavity along its wall, the
atrium touching the LV at the mitral plane, nothing drawn outside the imaging sector. A frame
is implausible when any criterion fails; the names of the failed criteria are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sonoloop.ml.infer import enclosed

# Thresholds, set against the 332 CAMUS expert label maps (tests/echo/test_quality.py checks
# that every one passes): at most 7.7 % of an expert LV border touches background (the
# annulus corners), so 30 % leaves room for honest variation.
LV_EXPOSED_MAX = 0.30
HOLE_MIN_FRACTION = 0.01
MIN_AREA_FRACTION = 0.002  # of the frame: below this a structure counts as missing
OUTSIDE_SECTOR_MAX = 0.20  # share of the drawn heart outside the sector (CAMUS experts draw up to 0.16 there)

CRITERIA = {
    "lv_missing": "no LV cavity",
    "myo_missing": "no myocardium",
    "la_missing": "no left atrium",
    "lv_fragments": "LV cavity in several pieces",
    "myo_fragments": "myocardium in several pieces",
    "la_fragments": "left atrium in several pieces",
    "lv_holes": "holes in the LV cavity",
    "la_holes": "holes in the left atrium",
    "lv_exposed": "the myocardium does not border the LV cavity along its wall",
    "la_detached": "the left atrium does not touch the LV at the mitral plane",
    "outside_sector": "structures drawn outside the imaging sector",
    "lv_jump": "the LV area jumps against the neighbouring frames",  # set by echo.analyse.loop_check
}

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


@dataclass(frozen=True)
class ClassIndex:
    lv: int | None
    myo: int | None
    la: int | None

    @classmethod
    def of(cls, classes: list[str]) -> ClassIndex:
        index = {name: i for i, name in enumerate(classes)}
        return cls(index.get("LV"), index.get("MYO"), index.get("LA"))


def _components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=_EIGHT)[1])


def _has_holes(mask: np.ndarray) -> bool:
    """A hole larger than HOLE_MIN_FRACTION of the structure (expert labels recovered from JPEG
    carry pin-holes of up to 0.6 % of the atrium; a real gap is larger)."""
    holes, count = ndimage.label(enclosed(mask), structure=_FOUR)
    if not count:
        return False
    return bool(np.bincount(holes.ravel())[1:].max() > HOLE_MIN_FRACTION * mask.sum())


# The two 4-neighbour morphology steps the checks use, written as shifted boolean planes: the
# same pixels as ndimage.binary_erosion(mask, _FOUR, border_value=0) and binary_dilation(mask,
# _FOUR), ten times faster on these small crops (scipy's generic binary morphology was a third
# of a loop's plausibility checks).

def _border(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels with a 4-neighbour outside it (outside the array counts as outside)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    return mask & ~inner


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-neighbours."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def lv_exposure(labels: np.ndarray, index: ClassIndex) -> float:
    """Share of the LV cavity's border pixels that touch neither myocardium nor atrium."""
    lv = labels == index.lv
    border = _border(lv)
    if not border.any():
        return 0.0
    wall = _grow(labels == index.myo) if index.myo is not None else np.zeros_like(lv)
    if index.la is not None:
        wall |= _grow(labels == index.la)
    return float((border & ~wall).sum() / border.sum())


def sector_mask(image: np.ndarray, threshold: float = 0.04) -> np.ndarray:
    """The imaging sector of a loop from its (H, W) maximum-intensity image in [0, 1]: the
    convex hull of the lit pixels (a fan is convex), speckle-sized specks opened away first."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    lit = ndimage.binary_opening(image > threshold, iterations=2)
    points = np.argwhere(lit & ~ndimage.binary_erosion(lit))  # the hull of the outline is the hull of all
    if len(points) < 3:
        return lit
    try:
        hull = ConvexHull(points)
    except QhullError:  # all lit pixels on a line
        return lit
    canvas = Image.new("1", (image.shape[1], image.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(float(c), float(r)) for r, c in points[hull.vertices]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | lit


def frame_problems(labels: np.ndarray, index: ClassIndex, sector: np.ndarray | None = None) -> list[str]:
    """The failed criteria (keys of CRITERIA) of one (H, W) label map."""
    min_area = MIN_AREA_FRACTION * labels.size
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if rows.size:  # every criterion looks at the drawn structures only: work in their box
        box = (slice(max(0, rows[0] - 2), rows[-1] + 3), slice(max(0, cols[0] - 2), cols[-1] + 3))
        labels = labels[box]
        sector = sector[box] if sector is not None else None
    problems = []
    masks = {}
    for name, value in (("lv", index.lv), ("myo", index.myo), ("la", index.la)):
        if value is None:
            continue
        mask = labels == value
        masks[name] = mask
        if mask.sum() < min_area:
            problems.append(f"{name}_missing")
        elif _components(mask) > 1:
            problems.append(f"{name}_fragments")
    for name in ("lv", "la"):
        if name in masks and f"{name}_missing" not in problems and _has_holes(masks[name]):
            problems.append(f"{name}_holes")
    if "lv" in masks and "lv_missing" not in problems and lv_exposure(labels, index) > LV_EXPOSED_MAX:
        problems.append("lv_exposed")
    if ("la" in masks and "lv" in masks and "la_missing" not in problems and "lv_missing" not in problems
            and not (_grow(masks["la"]) & masks["lv"]).any()):
        problems.append("la_detached")
    if sector is not None:
        heart = labels > 0
        drawn = heart.sum()
        if drawn and (heart & ~sector).sum() > OUTSIDE_SECTOR_MAX * drawn:
            problems.append("outside_sector")
    return problems


def loop_problems(labels: np.ndarray, classes: list[str], sector: np.ndarray | None = None) -> list[list[str]]:
    """``frame_problems`` for every frame of (N, H, W) label maps."""
    index = ClassIndex.of(classes)
    # (two threads paid while the morphology was scipy's, which lets go of the GIL; with the
    # shifted planes above one thread checks a 120-frame loop in 0.2 s, as fast as two)
    return [frame_problems(frame, index, sector) for frame in labels]


def describe(problems: list[str]) -> str:
    return "; ".join(CRITERIA[p] for p in problems)


def curve_noise(values, cycle: int | None = None) -> float:
    """Frame-to-frame noise of a curve relative to its beat amplitude: the RMS of its second
    difference (what a smooth heart-beat curve hardly has) divided by the curve's range
    between its 5th and 95th percentiles. 0 for a straight or empty curve."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 3:
        return 0.0
    amplitude = float(np.percentile(x, 95) - np.percentile(x, 5))
    if amplitude <= 0:
        return 0.0
    return float(np.sqrt(np.mean(np.diff(x, 2) ** 2)) / amplitude)
