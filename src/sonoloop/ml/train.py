"""Training: Adam, Dice + cross-entropy, ultrasound augmentation, validation every epoch,
the best epoch kept, a checkpoint every epoch so an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.losses import DiceCELoss
from safetensors.torch import load_file, save_file

from .data import AUGMENTATIONS, LabelledFrame, patients, ultrasound_augmentation
from .modelfolder import load_model, load_unique_state, save_model, unique_state
from .network import build_network
from .preprocess import letterbox_labels, prepare
from .metrics import dice_by_class, mean
from .spec import CLASSES, DEFAULT_ARCHITECTURE, DEFAULT_PREPROCESSING

CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"


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
        frame = self.frames[index]
        image, labels = frame.load()
        # a frame from a DICOM image brings its ultrasound region and bit depth, as inference uses them
        x, geometry = prepare(image, self.size, getattr(frame, "box", None), getattr(frame, "bits_stored", None))
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


@dataclass
class TrainConfig:
    architecture: dict = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))
    preprocessing: dict = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    epochs: int = 50
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    augment: bool = True
    bf16: bool = False  # autocast on CPU (avx512_bf16) or GPU
    seed: int = 0
    workers: int = 0
    lr_schedule: str = "constant"  # constant | poly (nnU-Net's (1 - epoch/epochs)^0.9, set per epoch)
    init_from: str | None = None  # a model folder whose weights start the run (fine-tuning); its name is the parent
    keep: str = "best"  # best: the epoch with the best validation Dice; last: the final epoch (validation only reported)
    augmentation: str = "basic"  # sonoloop.ml.data.AUGMENTATIONS: basic (v1, v2) | acquisition (flips, resolution, sector…)

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', not {self.keep!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; use one of {', '.join(AUGMENTATIONS)}")

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (more epochs may be asked for)."""
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("epochs", "workers") and not (k in _OPTIONAL and v == _OPTIONAL[k])}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def learning_rate_at(self, epoch: int) -> float:
        """The learning rate for 0-based ``epoch``."""
        if self.lr_schedule == "poly":
            return self.learning_rate * (1 - epoch / max(self.epochs, 1)) ** 0.9
        return self.learning_rate


LR_SCHEDULES = ("constant", "poly")
# fields added after the first runs; left at these values they do not enter the fingerprint,
# so checkpoints written before they existed still resume
_OPTIONAL = {"lr_schedule": "constant", "init_from": None, "keep": "best", "augmentation": "basic"}


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    val_dice: dict  # class name → mean Dice on the validation frames
    seconds: float

    @property
    def score(self) -> float:
        return float(np.mean(list(self.val_dice.values())))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _autocast(config: TrainConfig, device: str):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=config.bf16)


def evaluate_network(network, loader, config: TrainConfig, device: str) -> dict:
    network.eval()
    per_class: dict[str, list] = {name: [] for name in CLASSES[1:]}
    with torch.no_grad(), _autocast(config, device):
        for batch in loader:
            logits = network(batch["image"].to(device))
            predicted = logits.argmax(1).cpu().numpy()
            truth = batch["label"][:, 0].numpy()
            for p, t in zip(predicted, truth):
                for name, score in dice_by_class(p, t, CLASSES).items():
                    per_class[name].append(score)
    means = {name: mean(scores) for name, scores in per_class.items()}
    return {name: round(value, 4) for name, value in means.items() if value is not None}


def train(
    train_frames: list[LabelledFrame],
    val_frames: list[LabelledFrame],
    config: TrainConfig,
    work_dir: Path,
    progress: bool = True,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> list[EpochReport]:
    """Train (or resume) in ``work_dir``; returns the per-epoch history."""
    if not train_frames or not val_frames:
        raise ValueError("training needs at least one training and one validation frame")
    overlap = patients(train_frames) & patients(val_frames)
    if overlap:
        raise ValueError(f"patients in both training and validation: {sorted(overlap)[:5]}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = _device()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    size = config.preprocessing["size"]
    augment = ultrasound_augmentation(config.augmentation) if config.augment else None
    if augment is not None:
        augment.set_random_state(config.seed)
    train_loader = torch.utils.data.DataLoader(
        SegmentationDataset(train_frames, size, augment), batch_size=config.batch_size, shuffle=True,
        num_workers=config.workers, drop_last=len(train_frames) > config.batch_size,
    )
    val_loader = torch.utils.data.DataLoader(SegmentationDataset(val_frames, size), batch_size=config.batch_size)
    network = build_network(config.architecture).to(device)
    if config.init_from:
        parent, description = load_model(Path(config.init_from))
        if description["architecture"] != config.architecture or description["classes"] != CLASSES:
            raise ValueError(f"{config.init_from} has another architecture or classes; it cannot start this run")
        network.load_state_dict(parent.state_dict())
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    history: list[EpochReport] = []
    start_epoch, best_score = 0, -1.0

    checkpoint = work_dir / CHECKPOINT
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["fingerprint"] != config.fingerprint():
            raise ValueError(f"{checkpoint} belongs to a different training configuration; use another work folder")
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_score = int(state["epoch"]), float(state["best_score"])
        history = [EpochReport(**h) for h in json.loads(state["history"])]

    for epoch in range(start_epoch, config.epochs):
        began = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_at(epoch)
        network.train()
        losses = []
        batches = train_loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False)
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(config, device):
                logits = network(batch["image"].to(device))
            loss = loss_fn(logits.float(), batch["label"].to(device))
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress:
                batches.set_postfix(loss=f"{np.mean(losses):.4f}")
        report = EpochReport(epoch + 1, round(float(np.mean(losses)), 5),
                             evaluate_network(network, val_loader, config, device),
                             round(time.monotonic() - began, 1))
        history.append(report)
        if report.score > best_score or config.keep == "last":
            best_score = max(best_score, report.score)
            save_file({k: v.contiguous().cpu() for k, v in unique_state(network).items()}, work_dir / BEST)
        _save_checkpoint(checkpoint, network, optimizer, epoch + 1, best_score, history, config)
        if progress:
            print(f"epoch {report.epoch}: loss {report.train_loss:.4f}, validation Dice "
                  + ", ".join(f"{k} {v:.3f}" for k, v in report.val_dice.items()) + f" ({report.seconds:.0f} s)")
        if on_epoch is not None:
            on_epoch(report)
    return history


def _save_checkpoint(path: Path, network, optimizer, epoch: int, best: float, history, config: TrainConfig) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save({
        "network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
        "best_score": best, "history": json.dumps([asdict(h) for h in history]), "fingerprint": config.fingerprint(),
    }, temporary)
    temporary.replace(path)


def export_best(work_dir: Path, folder: Path, config: TrainConfig, history: list[EpochReport],
                train_frames: list[LabelledFrame], val_frames: list[LabelledFrame], *, name: str,
                data_source: str, parent: str | None = None, fp16: bool = False, notice: str | None = None,
                extra: dict | None = None) -> Path:
    """The best epoch as a self-describing model folder (``extra`` joins its training record)."""
    network = build_network(config.architecture)
    load_unique_state(network, load_file(Path(work_dir) / BEST))
    best = history[-1] if config.keep == "last" else max(history, key=lambda h: h.score)
    description = {
        "name": name,
        "parent": parent,
        "architecture": config.architecture,
        "classes": CLASSES,
        "preprocessing": config.preprocessing,
        "postprocessing": {"largest_component": True, "fill_holes": ["LV", "LA"]},
        "training": {
            "hyperparameters": {k: v for k, v in asdict(config).items() if k not in ("architecture", "preprocessing")},
            "data_source": data_source,
            "train_frames": [f.frame_id for f in train_frames],
            "validation_frames": [f.frame_id for f in val_frames],
            "best_epoch": best.epoch,
            "history": [asdict(h) for h in history],
            **(extra or {}),
        },
        "metrics": {"validation_dice_network_space": best.val_dice},
    }
    return save_model(folder, network, description, fp16=fp16, notice=notice)
