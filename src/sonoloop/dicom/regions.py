"""The Sequence of Ultrasound Regions (PS3.3 C.8.5.5), read once for everything that needs it:
the region the image is read from (the model's crop) and its calibration (the measurements)
come from the same region, so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

TISSUE_2D = 1  # Region Spatial Format: 2D (tissue or flow)
CENTIMETRES = 3  # Physical Units X/Y Direction: cm
MIN_SIDE = 9  # pixels: smaller "regions" are labels, not images


@dataclass(frozen=True)
class Region:
    """One region; ``top``/``left`` inclusive, ``bottom``/``right`` exclusive (pixels)."""

    top: int
    left: int
    bottom: int
    right: int
    spatial_format: int
    units_x: int = 0
    units_y: int = 0
    dx: float = 0.0  # physical size of a pixel along x, in ``units_x``
    dy: float = 0.0

    @property
    def area(self) -> int:
        return max(0, self.bottom - self.top) * max(0, self.right - self.left)

    @property
    def in_centimetres(self) -> bool:
        return self.units_x == CENTIMETRES and self.units_y == CENTIMETRES and self.dx > 0 and self.dy > 0

    def clipped(self, height: int, width: int) -> tuple[int, int, int, int]:
        return max(0, self.top), max(0, self.left), min(height, self.bottom), min(width, self.right)


def ultrasound_regions(sequence) -> list[Region]:
    """Every region that can be read (malformed items are left out)."""
    found = []
    for item in sequence or []:
        try:
            fmt = int(item.get("RegionSpatialFormat", 0) or 0)
            top, left = int(item.RegionLocationMinY0), int(item.RegionLocationMinX0)
            bottom, right = int(item.RegionLocationMaxY1) + 1, int(item.RegionLocationMaxX1) + 1
            units_x = int(item.get("PhysicalUnitsXDirection", 0) or 0)
            units_y = int(item.get("PhysicalUnitsYDirection", 0) or 0)
            dx = abs(float(item.get("PhysicalDeltaX", 0) or 0))
            dy = abs(float(item.get("PhysicalDeltaY", 0) or 0))
        except (AttributeError, TypeError, ValueError):
            continue
        found.append(Region(top, left, bottom, right, fmt, units_x, units_y, dx, dy))
    return found


def imaging_region(sequence, height: int | None = None, width: int | None = None) -> Region | None:
    """The 2D tissue region the echo is read from: the largest one (the first of equals) whose
    sides, clipped to the frame when its size is given, are at least MIN_SIDE pixels."""
    best, best_area = None, 0
    for region in ultrasound_regions(sequence):
        if region.spatial_format != TISSUE_2D:
            continue
        top, left, bottom, right = region.clipped(height or 1 << 30, width or 1 << 30)
        if bottom - top < MIN_SIDE or right - left < MIN_SIDE:
            continue
        area = (bottom - top) * (right - left)
        if area > best_area:
            best, best_area = region, area
    return best
