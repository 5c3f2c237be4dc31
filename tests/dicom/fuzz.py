"""A deterministic corpus of broken DICOM files, each certain to be wrong by construction.

Every case keeps an intact preamble and file meta (so a sender can announce it in a C-STORE
request) and breaks the dataset: its pixel data cut short, its header cut inside a value
before the Study/Series UIDs, an element length pointing past the end, huge declared image
sizes, missing or malformed UIDs, or random bytes. Nothing here decides with Sonoloop's own
parser whether a case is broken.
"""

from __future__ import annotations

import io
import random
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble

# Small real files of several kinds: native explicit VR (secondary capture RGB), RLE ultrasound
# palette colour, JPEG-LS MR, JPEG 2000 ultrasound.
SOURCES = ("SC_rgb.dcm", "OBXXXX1A_rle.dcm", "emri_small_jpeg_ls_lossless.dcm", "US1_J2KI.dcm")
_LONG_LENGTH_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT"}


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    data: bytes  # a whole DICOM file


def _split(raw: bytes) -> tuple[bytes, bytes]:
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return raw[: fp.tell()], raw[fp.tell():]


def _elements(body: bytes):
    """(tag, VR, length, offset of its header, offset of its value) of the top-level elements
    (explicit VR little endian, as all the sources are)."""
    found = []
    for el in data_element_generator(io.BytesIO(body), False, True, defer_size=None):
        if not hasattr(el, "length"):  # a sequence, parsed: not needed
            continue
        header = 12 if el.VR in _LONG_LENGTH_VRS else 8
        found.append((el.tag, el.VR, el.length, el.value_tell - header, el.value_tell))
    return found


def _rewritten(raw: bytes, **changes) -> bytes:
    ds = dcmread(io.BytesIO(raw))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _cases_for(name: str, raw: bytes, rng: random.Random):
    meta, body = _split(raw)
    elements = _elements(body)
    pixels = next(e for e in elements if e[0] == 0x7FE00010)
    before_uids = [e for e in elements if e[0] >> 16 < 0x0020 and e[2] >= 4]
    short_length = [e for e in elements if e[0] >> 16 == 0x0008 and e[1] not in _LONG_LENGTH_VRS]

    for n in range(38):  # cut inside the pixel data: fewer bytes (or fragments) than declared
        cut = rng.randrange(pixels[4] + 16, len(body) - 8)
        yield Case(f"pixels-cut-{n}", name, meta + body[:cut])
    for n in range(25):  # cut inside a value before the Study/Series UIDs
        tag, vr, length, _, value = rng.choice(before_uids)
        yield Case(f"header-cut-{n}-{tag:08X}", name, meta + body[: value + rng.randrange(1, length)])
    for n in range(25):  # a length that points past the end of the file
        tag, vr, length, start, _ = rng.choice(short_length)
        broken = bytearray(body)
        struct.pack_into("<H", broken, start + 6, 0xFFFF if len(body) - start < 0xFFFF else 0xFFFE)
        yield Case(f"length-past-end-{n}-{tag:08X}", name, meta + bytes(broken))
    for n in range(25):
        tag, vr, length, start, _ = rng.choice(elements[-3:])  # pixel data and its neighbours: 4-byte lengths
        if vr in _LONG_LENGTH_VRS:
            broken = bytearray(body)
            struct.pack_into("<I", broken, start + 8, 0xFFFFFFF0 - rng.randrange(0, 1 << 16) * 2)
            yield Case(f"huge-length-{n}-{tag:08X}", name, meta + bytes(broken))
    ds = dcmread(io.BytesIO(raw), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    native = not ds.file_meta.TransferSyntaxUID.is_compressed
    for n in range(10):
        if native:  # image sizes the pixel data cannot hold
            rows, columns = rng.choice([(65535, 65535), (4096, 4096), (ds.Rows * 4, ds.Columns), (ds.Rows, ds.Columns * 3)])
            count = frames * rng.choice([1, 50, 1000])
        else:  # a compressed image declaring far more pixels than any decoder should allocate
            rows, columns, count = 65535, 65535, frames * rng.choice([1000, 5000])
        yield Case(f"declared-size-{n}", name, _rewritten(raw, Rows=rows, Columns=columns, NumberOfFrames=count))
    for n, keyword in enumerate(("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID") * 3):
        yield Case(f"missing-{keyword}-{n}", name, _rewritten(raw, **{keyword: None}))
    for n in range(12):
        keyword = rng.choice(("StudyInstanceUID", "SeriesInstanceUID"))
        bad = rng.choice(["1.2.abc", "1..2", ".1.2", "1.2.", "1.2.3" + ".4" * 40, "1.2.03.x", "../../etc/passwd"])
        yield Case(f"bad-uid-{keyword}-{n}", name, _rewritten(raw, **{keyword: bad}))
    for n in range(12):
        yield Case(f"garbage-{n}", name, meta + rng.randbytes(rng.randrange(16, 4096)))


def corpus(data_dir: Path, seed: int = 12, repeats: int = 1) -> list[Case]:
    """At least 500 cases (about 140 per source file) for ``repeats=1``."""
    rng = random.Random(seed)
    cases = []
    for _ in range(repeats):
        for name in SOURCES:
            cases.extend(_cases_for(name, (data_dir / name).read_bytes(), rng))
    return cases
