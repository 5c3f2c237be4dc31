"""Decoding stored pixel data on demand: one frame at a time, as native bytes or a PNG."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.pixels import apply_color_lut, apply_voi_lut, pixel_array


class NoPixelData(ValueError):
    pass


def frame_array(path: Path, index: int) -> tuple[np.ndarray, object]:
    """Frame ``index`` (0-based) decoded, with the dataset header it came from."""
    header = dcmread(path, stop_before_pixels=True)
    if header.get("Rows") is None:
        raise NoPixelData("this instance has no image")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if not 0 <= index < frames:
        raise IndexError(f"frame {index + 1} does not exist; the instance has {frames} frame(s)")
    return pixel_array(path, index=index), header


def frame_native_bytes(path: Path, index: int) -> bytes:
    """Frame ``index`` as uncompressed little-endian pixel data (colour as interleaved RGB)."""
    array, _ = frame_array(path, index)
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()


def _to_uint8(array: np.ndarray, header) -> np.ndarray:
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, header)
        if array.dtype != np.uint8:
            array = (array / 257).astype(np.uint8)
        return array
    if array.ndim == 3 and array.shape[-1] == 3:
        if array.dtype == np.uint8:
            return array
        top = float(array.max()) or 1.0
        return (array.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    if "WindowCenter" in header or "VOILUTSequence" in header:
        array = apply_voi_lut(array, header)
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    if photometric == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.uint8)


def render_png(path: Path, index: int = 0, max_size: int | None = None) -> bytes:
    """Frame ``index`` as an 8-bit PNG for display, at most ``max_size`` pixels on a side."""
    array, header = frame_array(path, index)
    image = Image.fromarray(_to_uint8(array, header))
    if max_size:
        image.thumbnail((max_size, max_size))
    out = BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()


def all_frames(path: Path) -> tuple[np.ndarray, object]:
    """Every frame decoded (N, H, W) or (N, H, W, 3) — colour as RGB — with the header."""
    header = dcmread(path, stop_before_pixels=True)
    if header.get("Rows") is None:
        raise NoPixelData(f"{Path(path).name} has no image (SOP Class {header.get('SOPClassUID', '?')})")
    array = pixel_array(path)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        array = array[None]
    if str(header.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        array = apply_color_lut(array, header)
    return array, header
