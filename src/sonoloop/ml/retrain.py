"""Retraining from expert corrections: fine-tune a parent model on annotated frames mixed
with original training frames, as the paper's experiments do.

Pure PyTorch/NumPy: the frames come in as objects with ``load() -> (image, labels)`` (CAMUS
frames from :mod:`.data`, or :class:`AnnotatedFrame` built by the web app from stored
images and approved annotations). The result is a new self-describing model folder whose
``model.json`` lists the parent, the exact annotation versions and original frames used,
the mixing strategy and every hyperparameter.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .data import LabelledFrame, patients
from .modelfolder import read_description

if TYPE_CHECKING:  # training imports torch and MONAI; the web pages only need STRATEGIES
    from .train import EpochReport, TrainConfig

# originals per annotated frame: the paper's experiments 1, 2 and 3
STRATEGIES = {"annotations-only": 0.0, "equal": 1.0, "two-to-one": 2.0}


class RetrainError(ValueError):
    """Retraining that cannot start or finish; the message says why."""


@dataclass(frozen=True)
class AnnotatedFrame:
    """One expert-annotated frame of a DICOM image: the frame, its labels, and the ultrasound
    region and bit depth that inference uses for it (so training prepares it the same way)."""

    frame_id: str  # e.g. "<SOP Instance UID>#5@v3": the image, the frame, the annotation version
    patient: str
    image: np.ndarray
    labels: np.ndarray
    box: object = None  # preprocess.Box of the ultrasound region, or None (sector detected)
    bits_stored: int | None = None
    view: str = ""
    phase: str = ""
    split: str = "annotation"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return self.image, self.labels


def ratio_for(strategy: str, ratio: float | None = None) -> float:
    if strategy == "ratio":
        if ratio is None or ratio < 0:
            raise RetrainError("the 'ratio' strategy needs a ratio of originals per annotated frame, 0 or more")
        return float(ratio)
    if strategy not in STRATEGIES:
        raise RetrainError(f"unknown mixing strategy {strategy!r}; use {', '.join(STRATEGIES)} or ratio")
    return STRATEGIES[strategy]


def mix(annotated: list, originals: list[LabelledFrame], ratio: float, seed: int) -> list[LabelledFrame]:
    """The original frames that join ``annotated``: round(ratio × annotated), drawn without
    replacement in a seeded order (all of them when there are fewer)."""
    wanted = round(ratio * len(annotated))
    if wanted == 0:
        return []
    order = sorted(originals, key=lambda f: f.frame_id)
    random.Random(seed).shuffle(order)
    return order[:wanted]


def retrain(parent: Path, annotated: list, originals: list[LabelledFrame], tuning: list[LabelledFrame], *,
            strategy: str, ratio: float | None, config: TrainConfig, work_dir: Path, out: Path, name: str,
            annotation_versions: list[dict], data_source: str, notice: str | None = None,
            on_epoch: Callable[[EpochReport], None] | None = None, progress: bool = False) -> Path:
    """Fine-tune ``parent`` and write the new version to ``out`` (never over an existing one).

    ``tuning`` frames choose the best epoch; they must share no patient with the training
    frames, and none of them should be in the locked held-out set the promotion gate uses.
    """
    from .train import export_best, train

    if not annotated:
        raise RetrainError("there are no approved annotations to learn from")
    if Path(out).exists():
        raise RetrainError(f"{out} exists; a model version is never overwritten")
    description = read_description(parent)
    per_annotation = ratio_for(strategy, ratio)
    chosen = mix(annotated, originals, per_annotation, config.seed)
    training = [*annotated, *chosen]
    overlap = patients(training) & patients(tuning)
    if overlap:
        raise RetrainError(f"patients in both training and tuning: {sorted(overlap)[:5]}")
    config = replace(config, architecture=dict(description["architecture"]),
                     preprocessing=dict(description["preprocessing"]), init_from=str(Path(parent).resolve()))
    try:
        history = train(training, tuning, config, work_dir, progress=progress, on_epoch=on_epoch)
        export_best(work_dir, out, config, history, training, tuning, name=name, data_source=data_source,
                    parent=description.get("name"), notice=notice, extra={
                        "retraining": {
                            "strategy": strategy,
                            "originals_per_annotated_frame": per_annotation,
                            "annotations": annotation_versions,
                            "annotated_frames": [f.frame_id for f in annotated],
                            "original_frames": [f.frame_id for f in chosen],
                            "tuning_frames": [f.frame_id for f in tuning],
                        }})
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return Path(out)
