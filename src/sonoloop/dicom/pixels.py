"""Decoding stored pixel data on demand: one frame at a time, as native bytes or a PNG."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import get_frame
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


# PS3.18 Table 8.7.3-2: the media type of a frame in each compressed transfer syntax
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}


_ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def frame_stored_bytes(path: Path, index: int) -> bytes:
    """Frame ``index`` of an encapsulated (compressed) instance as stored: the codestream
    itself (a JPEG file's bytes for JPEG), not decoded. Only the header, the offset table and
    that frame's fragments are read — a viewer asks for a cine frame by frame."""
    with open(path, "rb") as fp:
        header = dcmread(fp, stop_before_pixels=True)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        if not 0 <= index < frames:
            raise IndexError(f"frame {index + 1} does not exist; the instance has {frames} frame(s)")
        element = fp.read(12)  # tag, VR, reserved, undefined length: the encapsulated value follows
        if element[:4] == _ENCAPSULATED_PIXEL_DATA and element[8:] == b"\xff\xff\xff\xff":
            return get_frame(fp, index, number_of_frames=frames)
    ds = dcmread(path)  # anything unusual: read it all
    if "PixelData" not in ds:
        raise NoPixelData("this instance has no image")
    return get_frame(ds.PixelData, index, number_of_frames=frames)


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


_BASELINE_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # 8-bit lossy JPEG, as most echo cines
_LUMA_THREADS = 2


def _decode_luma(codestream: bytes) -> np.ndarray:
    image = Image.open(BytesIO(codestream))
    image.draft("L", image.size)  # libjpeg decodes the Y component alone: no chroma, no colour conversion
    if image.mode != "L":
        raise ValueError(f"the JPEG frame decodes as {image.mode}, not as its luma")
    return np.asarray(image)


def _jpeg_luma(path: Path, frames: int, rows: int, columns: int) -> np.ndarray | None:
    """Each frame's Y plane straight from its JPEG codestream (Pillow's libjpeg-turbo: the same
    values as pydicom's Pillow decoder gives for Y), two frames at a time (the decoder
    releases the GIL). None when the data is not what this expects: the caller decodes the
    usual way, and reports what is wrong there."""
    from concurrent.futures import ThreadPoolExecutor

    from pydicom.encaps import generate_frames

    try:
        data = dcmread(path, specific_tags=["PixelData"]).PixelData
        codestreams = list(generate_frames(data, number_of_frames=frames))
        if len(codestreams) != frames:
            return None
        out = np.empty((frames, rows, columns), dtype=np.uint8)
        with ThreadPoolExecutor(_LUMA_THREADS, thread_name_prefix="sonoloop-jpeg") as pool:
            for index, plane in enumerate(pool.map(_decode_luma, codestreams)):
                if plane.shape != (rows, columns):
                    return None
                out[index] = plane
        return out
    except Exception:  # noqa: BLE001 - a damaged or unusual codestream: the general decoder says why
        return None


def all_frames(path: Path, luma: bool = False) -> tuple[np.ndarray, object, int]:
    """Every frame decoded for analysis, the header, and the bit depth of the values.

    Frames are (N, H, W) or (N, H, W, 3), colour as RGB (YBR is converted by the decoder,
    palette colour through its lookup table, scaled to 8 bits). Monochrome values are made
    unsigned with higher = brighter: MONOCHROME1 is inverted, signed pixels are offset.
    The depth is what full scale means for the values: 8 for colour and palette frames,
    Bits Stored for monochrome.

    ``luma``: YBR frames (most colour echo, JPEG) come back as their Y plane (N, H, W) — the
    BT.601 luma the model's grayscale is defined as — skipping the conversion to RGB, which
    costs four times the decoding itself.
    """
    header = dcmread(path, stop_before_pixels=True)
    if header.get("Rows") is None:
        raise NoPixelData(f"{Path(path).name} has no image (SOP Class {header.get('SOPClassUID', '?')})")
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if luma and photometric in ("YBR_FULL", "YBR_FULL_422") and int(header.get("BitsStored", 8) or 8) == 8:
        syntax = str(getattr(header, "file_meta", {}).get("TransferSyntaxUID", ""))
        if syntax in _BASELINE_JPEG:
            array = _jpeg_luma(path, frames, int(header.Rows), int(header.Columns))
            if array is not None:
                return array, header, 8
        array = pixel_array(path, as_rgb=False)
        array = array[None] if frames == 1 else array
        return np.ascontiguousarray(array[..., 0]), header, 8
    array = pixel_array(path)
    if frames == 1:
        array = array[None]
    bits = int(header.get("BitsStored", 8) or 8)
    if photometric == "PALETTE COLOR":
        array = apply_color_lut(array, header)
        if array.dtype != np.uint8:  # 16-bit lookup table entries
            array = (array // 257).astype(np.uint8)
        return array, header, 8
    if array.ndim == 4:
        if array.dtype != np.uint8:
            top = float(2 ** bits - 1)
            array = (np.clip(array, 0, top).astype(np.float32) * (255.0 / top)).round().astype(np.uint8)
        return array, header, 8
    if int(header.get("PixelRepresentation", 0) or 0) == 1:
        array = (array.astype(np.int32) + 2 ** (bits - 1)).astype(np.uint16 if bits > 8 else np.uint8)
    if photometric == "MONOCHROME1":
        array = (2 ** bits - 1 - array.astype(np.int32)).astype(array.dtype)
    return array, header, bits
