"""Inference: frames in their original geometry in, label maps in the same geometry out."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .engines import FlipAveraged, build_engine
from .modelfolder import load_model
from .preprocess import Box, Geometry, loop_box, prepare


def restore_labels(probabilities: torch.Tensor, geometry: Geometry) -> np.ndarray:
    """(C, S, S) class probabilities → (H, W) labels of the original frame.

    The padding is cut away, the probabilities are resized (bilinear) to the crop box and
    the argmax is taken there; everything outside the box is background.
    """
    g = geometry
    inner = probabilities[:, g.pad_top: g.pad_top + g.scaled_height, g.pad_left: g.pad_left + g.scaled_width]
    resized = F.interpolate(inner[None].float(), size=(g.box.height, g.box.width), mode="bilinear",
                            align_corners=False)[0]
    labels = np.zeros((g.height, g.width), dtype=np.uint8)
    labels[g.box.top: g.box.bottom, g.box.left: g.box.right] = _argmax_over_classes(resized).numpy()
    return labels


def _argmax_over_classes(probabilities: torch.Tensor) -> torch.Tensor:
    """``probabilities.argmax(0)`` as uint8, the first class winning ties — a plane-by-plane
    comparison, ten times faster on the CPU than torch's strided argmax over the class axis."""
    best, labels = probabilities[0].clone(), torch.zeros(probabilities.shape[1:], dtype=torch.uint8)
    for c in range(1, probabilities.shape[0]):
        higher = probabilities[c] > best
        labels[higher] = c
        best = torch.maximum(best, probabilities[c])
    return labels


def keep_largest_components(labels: np.ndarray, classes: int) -> np.ndarray:
    """Each structure is one connected region: smaller islands of a class become background."""
    from scipy import ndimage

    cleaned = labels.copy()
    for c in range(1, classes):
        regions, count = ndimage.label(labels == c)
        if count > 1:
            sizes = np.bincount(regions.ravel())
            sizes[0] = 0
            cleaned[(regions != 0) & (regions != sizes.argmax())] = 0
    return cleaned


def enclosed(mask: np.ndarray) -> np.ndarray:
    """The pixels outside ``mask`` that it encloses completely (its holes, 4-connected): the
    parts of the complement that do not reach the border of the mask's bounding box. One
    labelling pass over that box — several times faster than ``binary_fill_holes``."""
    from scipy import ndimage

    holes = np.zeros_like(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return holes
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    outside, count = ndimage.label(~mask[box])
    if count == 0:
        return holes
    reaching = np.unique(np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]]))
    holes[box] = (outside > 0) & ~np.isin(outside, reaching)
    return holes


def fill_holes(labels: np.ndarray, classes: list[int]) -> np.ndarray:
    """Whatever a cavity (``classes``, e.g. LV and LA) encloses completely belongs to it."""
    filled = labels.copy()
    for c in classes:
        mask = labels == c
        if mask.any():
            filled[enclosed(mask)] = c
    return filled


def temporal_weights(sigma: float) -> np.ndarray:
    """Gaussian weights over neighbouring frames, ``sigma`` in frames (radius 2σ)."""
    radius = int(np.ceil(2 * sigma))
    offsets = np.arange(-radius, radius + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2)


class Segmenter:
    """A model version ready to segment frames; ``engine`` is one of ``engines.ENGINES``."""

    def __init__(self, folder: Path, device: str = "cpu", chunk: int = 1, engine: str = "auto",
                 flip_average: bool = False):
        self.network, self.description = load_model(folder, device)
        self.device, self.chunk = device, chunk
        self.size = int(self.description["preprocessing"]["size"])
        self.engine = build_engine(engine, self.network, self.size, device)
        if flip_average:  # test-time augmentation, twice the network time
            self.engine = FlipAveraged(self.engine)
        self.classes = list(self.description["classes"])
        postprocessing = self.description.get("postprocessing", {})
        self.largest_component = bool(postprocessing.get("largest_component", True))
        self.filled = [self.classes.index(name) for name in postprocessing.get("fill_holes", [])
                       if name in self.classes]

    def postprocess(self, labels: np.ndarray) -> np.ndarray:
        """The model folder's post-processing of one (H, W) label map."""
        if self.largest_component:
            labels = keep_largest_components(labels, len(self.classes))
        if self.filled:
            labels = fill_holes(labels, self.filled)
        return labels

    def predict(self, frames: np.ndarray | list, box: Box | None = None, bits_stored: int | None = None,
                on_progress: Callable[[int, int], None] | None = None, temporal_sigma: float = 0.0) -> np.ndarray:
        """Label maps (N, H, W) uint8 for frames (N, H, W) or (N, H, W, 3), ``chunk`` frames per
        network call (1 by default: on a 2-core CPU larger batches were slower per frame, see
        benchmarks/inference.py); ``on_progress(done, total)`` is called after each chunk.

        A loop without ``box`` gets one sector box for all its frames (``loop_box``).
        ``temporal_sigma`` > 0 (in frames) averages each frame's class probabilities with its
        neighbours' (Gaussian weights, within 2σ) before the argmax: a cine is one heart over
        time, and a frame's segmentation should not jump where its neighbours' do not."""
        if box is None and len(frames) > 1:
            box = loop_box(frames, bits_stored)
        prepared = [prepare(frame, self.size, box, bits_stored) for frame in frames]
        weights = temporal_weights(temporal_sigma) if temporal_sigma > 0 and len(prepared) > 1 else np.ones(1)
        radius = len(weights) // 2
        window: dict[int, torch.Tensor] = {}  # network-space probabilities of the frames still needed
        out: list[np.ndarray] = []

        scratch: list[torch.Tensor] = []  # one frame's probabilities, reused for each weighted term

        def emit(i: int) -> None:
            lo, hi = max(0, i - radius), min(len(prepared) - 1, i + radius)
            w = weights[lo - i + radius: hi - i + radius + 1]
            if hi == lo:
                mixed = window[i]  # one frame: its own probabilities (weight 1)
            else:
                # Σ wₖ·pₖ / Σ wₖ, the same float32 operations in the same order as a Python
                # sum of products, without a new tensor per product and sum (this was 7 % of a
                # smoothed loop's time in the worker)
                if not scratch:
                    scratch.append(torch.empty_like(window[lo]))
                mixed = window[lo] * float(w[0])
                for wk, k in zip(w[1:], range(lo + 1, hi + 1)):
                    mixed.add_(torch.mul(window[k], float(wk), out=scratch[0]))
                mixed.div_(float(w.sum()))
            out.append(self.postprocess(restore_labels(mixed, prepared[i][1])))
            window.pop(i - radius, None)

        for start in range(0, len(prepared), self.chunk):
            part = prepared[start: start + self.chunk]
            probabilities = self.engine(np.stack([x for x, _ in part])[:, None])
            for k, p in enumerate(probabilities, start=start):
                window[k] = p
                if k - radius >= 0:
                    emit(k - radius)
            if on_progress is not None:
                on_progress(min(start + len(part), len(prepared)), len(prepared))
        for i in range(max(0, len(prepared) - radius), len(prepared)):
            emit(i)
        return np.stack(out)
