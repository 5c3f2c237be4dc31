"""Preprocessing defined once, for training and inference: crop to the ultrasound region,
grayscale, letterbox to a square; and the exact way back to the original frame geometry."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sonoloop.dicom.regions import imaging_region

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class FrameError(ValueError):
    """A frame that cannot be segmented (empty, wrong shape); the message says why."""


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    bottom: int  # exclusive
    right: int  # exclusive

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True)
class Geometry:
    """Where the network input came from: original shape, crop box, scale and padding."""

    height: int
    width: int
    box: Box
    size: int
    scaled_height: int
    scaled_width: int
    pad_top: int
    pad_left: int

    def as_dict(self) -> dict:
        return asdict(self)


def to_gray(frame: np.ndarray, bits_stored: int | None = None) -> np.ndarray:
    """A frame (H, W) or (H, W, 3) of any integer or float type as float32 in [0, 1]."""
    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] in (3, 4):
        gray = frame[..., :3].astype(np.float32) @ _LUMA
    elif frame.ndim == 2:
        gray = frame.astype(np.float32)
    else:
        raise FrameError(f"a frame must be H×W or H×W×3, got shape {frame.shape}")
    if frame.dtype == np.uint8:
        top = 255.0
    elif np.issubdtype(frame.dtype, np.integer):
        top = float(2 ** bits_stored - 1) if bits_stored else max(float(gray.max()), 1.0)
    else:
        top = max(float(gray.max()), 1e-6)
    return np.clip(gray / top, 0.0, 1.0)


def sector_box(gray: np.ndarray, threshold: float = 0.04, min_fraction: float = 0.02) -> Box:
    """The bounding box of the imaging sector: rows and columns with enough lit pixels."""
    lit = gray > threshold
    rows = np.flatnonzero(lit.mean(axis=1) > min_fraction)
    cols = np.flatnonzero(lit.mean(axis=0) > min_fraction)
    if rows.size == 0 or cols.size == 0:
        raise FrameError("the frame is empty (no ultrasound sector found)")
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def loop_box(frames, bits_stored: int | None = None, samples: int = 16) -> Box:
    """One sector box for a whole loop: the sector of the brightest value each pixel takes in
    up to ``samples`` frames spread over the loop. Every frame of a loop then shares one
    geometry, so frames line up in the network's input (and can be compared over time)."""
    picks = np.linspace(0, len(frames) - 1, num=min(samples, len(frames))).round().astype(int)
    brightest = np.max([to_gray(frames[i], bits_stored) for i in picks], axis=0)
    return sector_box(brightest)


def region_box(regions, height: int, width: int) -> Box | None:
    """The imaging region of a DICOM Sequence of Ultrasound Regions (``dicom.regions``: the
    largest 2D one), clipped to the frame."""
    region = imaging_region(regions, height, width)
    return Box(*region.clipped(height, width)) if region else None


def geometry_for(height: int, width: int, box: Box, size: int) -> Geometry:
    scale = size / max(box.height, box.width)
    scaled_h = max(1, min(size, round(box.height * scale)))
    scaled_w = max(1, min(size, round(box.width * scale)))
    return Geometry(height, width, box, size, scaled_h, scaled_w, (size - scaled_h) // 2, (size - scaled_w) // 2)


def _letterbox(array: np.ndarray, geometry: Geometry, mode: str, resample, dtype) -> np.ndarray:
    b = geometry.box
    crop = Image.fromarray(array[b.top: b.bottom, b.left: b.right].astype(dtype), mode=mode)
    scaled = np.asarray(crop.resize((geometry.scaled_width, geometry.scaled_height), resample))
    out = np.zeros((geometry.size, geometry.size), dtype=dtype)
    out[geometry.pad_top: geometry.pad_top + geometry.scaled_height,
        geometry.pad_left: geometry.pad_left + geometry.scaled_width] = scaled
    return out


def letterbox(gray: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Crop, resize (bilinear) and pad ``gray`` into the network's square input."""
    return _letterbox(gray, geometry, "F", Image.BILINEAR, np.float32)


def letterbox_labels(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The same mapping for a label map (nearest neighbour, values kept)."""
    return _letterbox(labels, geometry, "L", Image.NEAREST, np.uint8)


def prepare(frame: np.ndarray, size: int, box: Box | None = None, bits_stored: int | None = None
            ) -> tuple[np.ndarray, Geometry]:
    """Network input (size × size, float32 in [0, 1]) and the geometry to map results back."""
    gray = to_gray(frame, bits_stored)
    if float(gray.max()) <= 0.0:
        raise FrameError("the frame is empty (all pixels are zero)")
    box = box or sector_box(gray)
    geometry = geometry_for(gray.shape[0], gray.shape[1], box, size)
    return letterbox(gray, geometry), geometry
