"""The annotation document (``docs/annotation-schema.json``): RLE masks and their checks.

Pure NumPy, no Django: the same code reads a document for the server, for a script and,
later, for training. Masks are run-length encoded over the row-major flattened frame as
``[value, length, value, length, …]`` — the browser writes the same encoding.
"""

from __future__ import annotations

import numpy as np

from sonoloop.ml.metrics import dice_by_class, remap
from sonoloop.web.errors import BadRequest

SCHEMA = "sonoloop-annotation"
SCHEMA_VERSION = 1
ENCODING = "rle"
CLASSES = {1: "LV", 2: "MYO", 3: "LA"}  # label value → structure: the document's own vocabulary
CLASS_MAP = ["background", *CLASSES.values()]  # the same as a class list (value = index)


def structures() -> list[dict]:
    """The document's structures as the editor draws them: value, name and display colour
    (the colour the SEG recommends, ``dicom.seg.DISPLAY_RGB``): one map for server and editor."""
    from sonoloop.dicom.seg import DISPLAY_RGB

    return [{"value": value, "name": name, "color": list(DISPLAY_RGB[name])} for value, name in CLASSES.items()]
MAX_FRAMES = 5000


class DocumentError(BadRequest):
    """A document or upload that does not follow the schema; the message says where."""


def rle_encode(mask: np.ndarray) -> list[int]:
    flat = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    if flat.size == 0:
        return []
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.append(starts, flat.size))
    return np.column_stack((flat[starts], lengths)).ravel().tolist()


def rle_decode(counts, rows: int, columns: int, allowed: set[int], where: str = "mask") -> np.ndarray:
    pixels = rows * columns
    if not isinstance(counts, list) or len(counts) % 2 or not counts:
        raise DocumentError(f"{where}: counts must be a non-empty list of [value, length] pairs, flattened")
    if len(counts) > 2 * pixels:
        raise DocumentError(f"{where}: {len(counts) // 2} runs for a frame of {pixels} pixels")
    # Checked as Python ints, before NumPy sees them: int64 sums of huge runs wrap around.
    if any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
        raise DocumentError(f"{where}: counts must be whole numbers")
    lengths = counts[1::2]
    if any(length <= 0 or length > pixels for length in lengths):
        raise DocumentError(f"{where}: every run length must be from 1 to the frame's {pixels} pixels")
    covered = sum(lengths)
    if covered != pixels:
        raise DocumentError(f"{where}: the runs cover {covered} pixels, the frame has "
                            f"{rows}×{columns} = {pixels}")
    unknown = sorted(set(counts[0::2]) - allowed - {0})
    if unknown:
        raise DocumentError(f"{where}: label value(s) {unknown[:10]} are not in the class map "
                            f"({', '.join(f'{k}={v}' for k, v in CLASSES.items())})")
    return np.repeat(np.asarray(counts[0::2], dtype=np.uint8), np.asarray(lengths, dtype=np.int64)).reshape(rows, columns)


def _whole(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DocumentError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def parse_upload(body, *, rows: int, columns: int, number_of_frames: int, sop_instance_uid: str):
    """Check an annotation sent by a client against its source image; return (frames, masks, extras).

    ``masks`` is (len(frames), rows, columns) uint8 in the order of ``frames`` (1-based,
    ascending). Raises :class:`DocumentError` with a message for a person.
    """
    if not isinstance(body, dict):
        raise DocumentError("the body must be a JSON object")
    if body.get("schema_version") != SCHEMA_VERSION:
        raise DocumentError(f"schema_version must be {SCHEMA_VERSION} (this server reads version "
                            f"{SCHEMA_VERSION} of {SCHEMA}), not {body.get('schema_version')!r}")
    if body.get("sop_instance_uid", sop_instance_uid) != sop_instance_uid:
        raise DocumentError("sop_instance_uid does not match the instance in the URL")
    for key, expected in (("rows", rows), ("columns", columns), ("number_of_frames", number_of_frames)):
        if key in body and body[key] != expected:
            raise DocumentError(f"{key} is {body[key]!r} but the image has {expected}")
    classes = body.get("classes", {str(k): v for k, v in CLASSES.items()})
    if not isinstance(classes, dict) or {str(k): v for k, v in CLASSES.items()} != classes:
        raise DocumentError(f"classes must be the class map {({str(k): v for k, v in CLASSES.items()})}; "
                            f"got {classes!r}")
    frames = body.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DocumentError("frames must be a non-empty list of the frame numbers (1-based) the annotation covers")
    frames = [_whole(f, "each frame number", 1, number_of_frames) for f in frames]
    if len(set(frames)) != len(frames):
        raise DocumentError("frames lists a frame more than once")
    masks = body.get("masks")
    if not isinstance(masks, dict) or set(masks) != {str(f) for f in frames}:
        raise DocumentError("masks must have exactly one entry per frame in frames, keyed by the frame number")
    frames = sorted(frames)
    stack = np.empty((len(frames), rows, columns), dtype=np.uint8)
    for i, f in enumerate(frames):
        entry = masks[str(f)]
        if not isinstance(entry, dict) or entry.get("encoding") != ENCODING:
            raise DocumentError(f"masks[{f}] must be an object with encoding {ENCODING!r} and counts")
        stack[i] = rle_decode(entry.get("counts"), rows, columns, set(CLASSES), where=f"masks[{f}]")
    extras = {key: body.get(key) for key in ("status", "comment", "started_from_result", "parent_version")}
    if extras["comment"] is not None and (not isinstance(extras["comment"], str) or len(extras["comment"]) > 2000):
        raise DocumentError("comment must be text of at most 2000 characters")
    for key in ("started_from_result", "parent_version"):
        if extras[key] is not None:
            _whole(extras[key], key, 1, 2**31)
    return frames, stack, extras


def build(*, sop_instance_uid: str, rows: int, columns: int, number_of_frames: int, frames: list[int],
          masks: np.ndarray, author: str, created: str, version: int, parent_version: int | None,
          started_from: dict | None) -> dict:
    """The stored document: what was uploaded, plus what only the server may set."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "sop_instance_uid": sop_instance_uid,
        "version": version,
        "parent_version": parent_version,
        "rows": rows,
        "columns": columns,
        "number_of_frames": number_of_frames,
        "classes": {str(k): v for k, v in CLASSES.items()},
        "frames": list(frames),
        "author": author,
        "created": created,
        "started_from": started_from,
        "masks": {str(f): {"encoding": ENCODING, "counts": rle_encode(m)} for f, m in zip(frames, masks)},
    }


def read_masks(document: dict) -> tuple[list[int], np.ndarray]:
    rows, columns = document["rows"], document["columns"]
    frames = document["frames"]
    masks = np.stack([rle_decode(document["masks"][str(f)]["counts"], rows, columns, set(CLASSES), f"masks[{f}]")
                      for f in frames])
    return frames, masks


def dice_per_class(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """Dice between two label stacks in the document's class map per structure (``ml.metrics``:
    None where neither has the structure), rounded."""
    return {name: None if score is None else round(score, 4)
            for name, score in dice_by_class(a, b, CLASS_MAP).items()}


def from_model(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """A model's label maps (values index its ``classes``, in its model.json's order) in the
    document's class map, by structure name."""
    return remap(labels, classes, CLASS_MAP)