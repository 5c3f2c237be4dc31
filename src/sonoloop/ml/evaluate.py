"""Evaluation in the original frame geometry: per-class Dice, the CAMUS structures
(LV endo = 1, LV epi = 1 ∪ 2, LA = 3) by ED/ES, and the 95th-percentile Hausdorff distance;
written as JSON, a Markdown table and a PNG grid of predictions over the ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from PIL import Image, ImageDraw

from .data import LabelledFrame
from .infer import Segmenter
from .metrics import dice, mean, remap
from .spec import CLASSES

STRUCTURES = {"LV endo": (1,), "LV epi": (1, 2), "LA": (3,), "MYO": (2,)}
COLOURS = {1: (255, 64, 64), 2: (64, 200, 64), 3: (64, 128, 255)}


def hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    """In pixels; NaN when either mask is empty."""
    if not prediction.any() or not truth.any():
        return float("nan")
    p = torch.from_numpy(prediction)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    return float(compute_hausdorff_distance(p, t, percentile=95)[0, 0])


def without_specks(mask: np.ndarray, fraction: float = 0.01) -> np.ndarray:
    """The mask without islands under ``fraction`` of its area.

    The CAMUS frames' labels were recovered from JPEG and carry isolated specks far from
    the structure; one speck decides a Hausdorff distance, so HD95 uses the reference
    without them (Dice uses the reference as it is)."""
    from scipy import ndimage

    regions, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(regions.ravel())
    keep = np.flatnonzero(sizes >= fraction * mask.sum())
    return np.isin(regions, keep[keep != 0])


def frame_scores(prediction: np.ndarray, truth: np.ndarray) -> dict:
    scores = {}
    for name, labels in STRUCTURES.items():
        p, t = np.isin(prediction, labels), np.isin(truth, labels)
        score = dice(p, t)
        scores[name] = {"dice": None if score is None else round(score, 4),
                        "hd95": round(hd95(p, without_specks(t)), 2)}
    return scores


def _mean(values: list[float | None]) -> float | None:
    value = mean(values)
    return None if value is None else round(value, 4)


def summarise(per_frame: list[dict]) -> dict:
    summary = {}
    for phase in ("ED", "ES", "all"):
        rows = [f for f in per_frame if phase == "all" or f["phase"] == phase]
        if not rows:
            continue
        summary[phase] = {
            name: {
                "dice": _mean([r["scores"][name]["dice"] for r in rows]),
                "hd95_px": _mean([r["scores"][name]["hd95"] for r in rows]),
                "frames": len(rows),
            }
            for name in STRUCTURES
        }
    return summary


def at_resolution(image: np.ndarray, truth: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A frame and its labels as a machine storing ``size`` pixels on the long side would give
    them (e.g. 112 for EchoNet-style loops): the image resampled (anti-aliased), the labels by
    nearest neighbour, the aspect ratio kept."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(image).resize(shape, Image.BILINEAR, reducing_gap=None))
    return small, np.asarray(Image.fromarray(truth).resize(shape, Image.NEAREST))


def _prepared(frame, mirror: bool, resolution: int | None) -> tuple[np.ndarray, np.ndarray]:
    image, truth = frame.load()
    if mirror:
        image, truth = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(truth[:, ::-1])
    if resolution:
        image, truth = at_resolution(image, truth, resolution)
    return image, truth


def predict_frame(segmenter: Segmenter, frame, image: np.ndarray) -> np.ndarray:
    """As inference sees the frame (a frame from a DICOM image brings its ultrasound region and
    bit depth), in the references' class map (``spec.CLASSES``) whatever the model's order."""
    labels = segmenter.predict(image[None], getattr(frame, "box", None), getattr(frame, "bits_stored", None))[0]
    return remap(labels, segmenter.classes, CLASSES)


def ejection_fraction(ed: np.ndarray, es: np.ndarray) -> float | None:
    """Single-plane area–length EF (%) from ED and ES label maps (LV = 1, LA = 3), pixel units."""
    from sonoloop.echo.measure import Calibration, area_length_volume, long_axis

    volumes = []
    for labels in (ed, es):
        axis = long_axis(labels == 1, labels == 3, Calibration())
        if axis is None:
            return None
        volumes.append(area_length_volume(float((labels == 1).sum()), axis.length))
    return round(100.0 * (volumes[0] - volumes[1]) / volumes[0], 2) if volumes[0] > 0 else None


def ef_pairs(per_frame_masks: dict) -> list[dict]:
    """EF from the model's and from the expert's masks for every patient and view whose ED and
    ES frames were both evaluated."""
    pairs = []
    for (patient, view), phases in sorted(per_frame_masks.items()):
        if "ED" in phases and "ES" in phases:
            (ed_truth, ed_pred), (es_truth, es_pred) = phases["ED"], phases["ES"]
            expert, model = ejection_fraction(ed_truth, es_truth), ejection_fraction(ed_pred, es_pred)
            if expert is not None and model is not None:
                pairs.append({"patient": patient, "view": view, "ef_expert": expert, "ef_model": model,
                              "error": round(model - expert, 2)})
    return pairs


def evaluate(segmenter: Segmenter, frames: list[LabelledFrame], mirror: bool = False,
             resolution: int | None = None) -> tuple[dict, list[tuple]]:
    """``mirror``: every frame and its labels flipped left–right, as echoes recorded in the
    mirrored display convention (LV on the other side) look. ``resolution``: frames and labels
    resampled to that many pixels on the long side first, and scored there."""
    per_frame, examples, masks = [], [], {}
    for frame in frames:
        image, truth = _prepared(frame, mirror, resolution)
        prediction = predict_frame(segmenter, frame, image)
        per_frame.append({"frame": frame.frame_id, "patient": frame.patient, "view": frame.view,
                          "phase": frame.phase, "scores": frame_scores(prediction, truth)})
        examples.append((frame.frame_id, image, truth, prediction))
        masks.setdefault((frame.patient, frame.view), {})[frame.phase] = (truth, prediction)
    pairs = ef_pairs(masks)
    report = {"model": segmenter.description.get("name"), "frames": len(frames), "mirrored": mirror,
              "resolution": resolution, "summary": summarise(per_frame), "per_frame": per_frame,
              "ef_pairs": pairs,
              "ef_mean_absolute_error": round(float(np.mean([abs(p["error"]) for p in pairs])), 2) if pairs else None}
    return report, examples


def markdown_table(report: dict) -> str:
    mirrored = ", mirrored left–right" if report.get("mirrored") else ""
    if report.get("resolution"):
        mirrored += f", resampled to {report['resolution']} px on the long side and scored there"
    lines = [f"Model `{report['model']}` on {report['frames']} frames{mirrored} (Dice / HD95 in pixels; HD95 against "
             "the reference without isolated label specks)", "",
             "| phase | " + " | ".join(STRUCTURES) + " |", "| --- |" + " --- |" * len(STRUCTURES)]
    for phase, structures in report["summary"].items():
        cells = [f"{s['dice']:.3f} / " + (f"{s['hd95_px']:.1f}" if s["hd95_px"] is not None else "n/a")
                 for s in structures.values()]
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    pairs = report.get("ef_pairs") or []
    if pairs:
        lines += ["", f"EF (single-plane area–length) from the model's ED/ES masks against the expert's, "
                      f"{len(pairs)} patient view(s): mean absolute error {report['ef_mean_absolute_error']:.1f} points",
                  "", "| patient | view | expert EF % | model EF % |", "| --- | --- | --- | --- |"]
        lines += [f"| {p['patient']} | {p['view']} | {p['ef_expert']:.1f} | {p['ef_model']:.1f} |" for p in pairs]
    return "\n".join(lines) + "\n"


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def png_grid(examples: list[tuple], path: Path, columns: int = 4, tile: int = 256) -> None:
    """Each tile: the frame, ground truth filled faintly, prediction outlined."""
    rows = max(1, math.ceil(len(examples) / columns))
    canvas = Image.new("RGB", (columns * tile, rows * (tile + 16)), "black")
    draw = ImageDraw.Draw(canvas)
    for n, (frame_id, image, truth, prediction) in enumerate(examples):
        rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
        for label, colour in COLOURS.items():
            rgb[truth == label] = 0.7 * rgb[truth == label] + 0.3 * np.array(colour)
            rgb[_outline(prediction == label)] = colour
        picture = Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((tile, tile))
        x, y = (n % columns) * tile, (n // columns) * (tile + 16)
        canvas.paste(picture, (x, y + 16))
        draw.text((x + 4, y + 2), frame_id, fill="white")
    canvas.save(path)


def write_reports(report: dict, examples: list[tuple], json_path: Path, markdown_path: Path | None = None,
                  png_path: Path | None = None) -> None:
    Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    if markdown_path:
        Path(markdown_path).write_text(markdown_table(report))
    if png_path:
        png_grid(examples[:16], Path(png_path))


def mean_dice(segmenter: Segmenter, frames: list) -> dict[str, float]:
    """Mean Dice per structure (LV endo, LV epi, LA, MYO) over ``frames`` — what the promotion gate compares."""
    if not frames:
        return {}
    scores: dict[str, list] = {name: [] for name in STRUCTURES}
    for frame in frames:
        image, truth = frame.load()
        prediction = predict_frame(segmenter, frame, image)
        for name, labels in STRUCTURES.items():
            scores[name].append(dice(np.isin(prediction, labels), np.isin(truth, labels)))
    return {name: round(value, 4) for name, value in ((n, mean(v)) for n, v in scores.items()) if value is not None}
