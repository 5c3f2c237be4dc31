"""Training data: the CAMUS frames layout (``images/``, ``labels/``, ``frames.csv``), split by patient.

The loader interface is :class:`LabelledFrame` lists, so other sources (the official CAMUS
release, the platform's own approved annotations) plug in by producing the same records.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .preprocess import letterbox_labels, prepare


class DataError(ValueError):
    pass


@dataclass(frozen=True)
class LabelledFrame:
    frame_id: str
    patient: str
    view: str
    phase: str
    split: str
    image_path: Path
    label_path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(Image.open(self.image_path).convert("L"))
        labels = np.asarray(Image.open(self.label_path))
        if image.shape != labels.shape:
            raise DataError(f"{self.frame_id}: image {image.shape} and labels {labels.shape} differ in size")
        return image, labels


def camus_frames(root: Path) -> list[LabelledFrame]:
    """Every frame listed in ``root/frames.csv``."""
    root = Path(root)
    index = root / "frames.csv"
    if not index.exists():
        raise DataError(f"{root} is not a CAMUS frames folder: {index} is missing")
    frames = []
    with index.open(newline="") as fh:
        for row in csv.DictReader(fh):
            frame = LabelledFrame(
                row["frame"], row["patient"], row["view"], row["phase"], row["split"],
                root / "images" / f"{row['frame']}.png", root / "labels" / f"{row['frame']}.png",
            )
            if not frame.image_path.exists() or not frame.label_path.exists():
                raise DataError(f"{frame.frame_id} is listed in frames.csv but its image or labels are missing")
            frames.append(frame)
    return frames


def select(frames: list[LabelledFrame], split: str | None = None, limit: int | None = None) -> list[LabelledFrame]:
    chosen = [f for f in frames if split is None or f.split == split]
    if split is not None and not chosen:
        raise DataError(f"no frames in split {split!r}")
    return chosen[:limit] if limit else chosen


def patients(frames: list[LabelledFrame]) -> set[str]:
    return {f.patient for f in frames}


class SegmentationDataset(torch.utils.data.Dataset):
    """Frames preprocessed exactly as at inference; optional ultrasound augmentation."""

    def __init__(self, frames: list[LabelledFrame], size: int, augment=None, cache: bool = True):
        self.frames, self.size, self.augment = frames, size, augment
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.frames)

    def _prepared(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image, labels = self.frames[index].load()
        x, geometry = prepare(image, self.size)
        y = letterbox_labels(labels, geometry)
        if self._cache is not None:
            self._cache[index] = (x, y)
        return x, y

    def __getitem__(self, index: int) -> dict:
        x, y = self._prepared(index)
        item = {"image": torch.from_numpy(x)[None], "label": torch.from_numpy(y.astype(np.int64))[None]}
        if self.augment is not None:
            item = self.augment(item)
        return item


def ultrasound_augmentation():
    """Geometric jitter and intensity changes echo frames see; no flips (anatomy has a side)."""
    from monai.transforms import (
        Compose, RandAdjustContrastd, RandAffined, RandGaussianNoised, RandGaussianSmoothd, RandScaleIntensityd,
    )

    return Compose([
        RandAffined(keys=("image", "label"), prob=0.7, rotate_range=0.17, scale_range=0.1, translate_range=(16, 16),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
        RandScaleIntensityd(keys="image", prob=0.3, factors=0.15),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
        RandGaussianNoised(keys="image", prob=0.2, std=0.03),
    ])
