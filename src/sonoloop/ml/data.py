"""Training data: the CAMUS frames layout (``images/``, ``labels/``, ``frames.csv``), split by patient.

The loader interface is :class:`LabelledFrame` lists, so other sources (the official CAMUS
release, the platform's own approved annotations) plug in by producing the same records.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image



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
        image, labels = read_2d(self.image_path), read_2d(self.label_path).astype(np.uint8)
        if image.shape != labels.shape:
            raise DataError(f"{self.frame_id}: image {image.shape} and labels {labels.shape} differ in size")
        return image, labels


def read_2d(path: Path) -> np.ndarray:
    """A 2D frame from PNG, MetaImage (.mhd + .raw) or NIfTI (.nii, .nii.gz), as (H, W)."""
    name = path.name.lower()
    if name.endswith(".png"):
        image = Image.open(path)
        return np.asarray(image.convert("L") if image.mode not in ("L", "P", "I;16") else image)
    if name.endswith(".mhd"):
        return _read_metaimage(path)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        data = np.asarray(nibabel.load(str(path)).dataobj)
        return np.squeeze(data).T  # NIfTI stores x (columns) first
    raise DataError(f"{path.name}: unknown image format (PNG, .mhd or .nii[.gz] expected)")


_MET_TYPES = {"MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16, "MET_SHORT": np.int16,
              "MET_UINT": np.uint32, "MET_INT": np.int32, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64}


def _read_metaimage(path: Path) -> np.ndarray:
    header = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    try:
        width, height = (int(v) for v in header["DimSize"].split()[:2])
        dtype = np.dtype(_MET_TYPES[header["ElementType"]])
        raw = path.parent / header["ElementDataFile"]
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path.name}: not a 2D MetaImage header ({exc})") from None
    if header.get("BinaryDataByteOrderMSB", "False").lower() == "true":
        dtype = dtype.newbyteorder(">")
    data = np.fromfile(raw, dtype=dtype)
    if data.size < width * height:
        raise DataError(f"{raw.name} holds {data.size} values, {width}×{height} expected")
    return data[: width * height].reshape(height, width)


def camus_release(root: Path) -> list[LabelledFrame]:
    """The official CAMUS release: ``database_nifti/`` (with ``database_split/``) or the older
    MetaImage layout (``training/``, ``testing/`` with ``.mhd``/``.raw``); ED and ES frames of
    both views, with their ``_gt`` labels."""
    root = Path(root)
    nifti = root / "database_nifti"
    splits = {}
    for split_file in sorted((root / "database_split").glob("subgroup_*.txt")):
        split = split_file.stem.removeprefix("subgroup_")
        splits.update({line.strip(): split for line in split_file.read_text().splitlines() if line.strip()})
    if nifti.is_dir():
        folders, suffix = [(p, None) for p in sorted(nifti.glob("patient*"))], ".nii.gz"
    else:
        folders = [(p, group.name) for group in (root / "training", root / "testing") if group.is_dir()
                   for p in sorted(group.glob("patient*"))]
        suffix = ".mhd"
    if not folders:
        raise DataError(f"{root} is not a CAMUS release (no database_nifti/, training/ or testing/)")
    frames = []
    for folder, group in folders:
        patient = folder.name
        for view in ("2CH", "4CH"):
            for phase in ("ED", "ES"):
                image = folder / f"{patient}_{view}_{phase}{suffix}"
                label = folder / f"{patient}_{view}_{phase}_gt{suffix}"
                if image.exists() and label.exists():
                    split = splits.get(patient, group or "training")
                    frames.append(LabelledFrame(f"{patient}_{view}_{phase}", patient, view, phase, split, image, label))
    return frames


def camus_frames(root: Path) -> list[LabelledFrame]:
    """Every frame listed in ``root/frames.csv``."""
    root = Path(root)
    index = root / "frames.csv"
    if not index.exists() and ((root / "database_nifti").is_dir() or (root / "training").is_dir()):
        return camus_release(root)
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


AUGMENTATIONS = ("basic", "acquisition")


def ultrasound_augmentation(kind: str = "basic"):
    """Training augmentation on the prepared network input (preprocessing stays defined once).

    ``basic`` (v1, v2): geometric jitter and intensity changes, no flips.
    ``acquisition`` (v3): also what differs between machines and display conventions —
    left–right flips (the classes keep their meaning), lower resolution (down to ~80 px and
    back), depth (scale), sector width and position, gain, speckle and blur.
    """
    from monai.transforms import (
        Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised, RandGaussianSmoothd,
        RandScaleIntensityd,
    )

    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; use one of {', '.join(AUGMENTATIONS)}")
    if kind == "basic":
        return Compose([
            RandAffined(keys=("image", "label"), prob=0.7, rotate_range=0.17, scale_range=0.1,
                        translate_range=(16, 16), mode=("bilinear", "nearest"), padding_mode="zeros"),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
            RandScaleIntensityd(keys="image", prob=0.3, factors=0.15),
            RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0)),
            RandGaussianNoised(keys="image", prob=0.2, std=0.03),
        ])
    from .augment import RandLowResolutiond, RandSectord, RandSpeckled, UnitClipd

    return Compose([
        RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=1),  # (C, H, W): axis 1 is left–right
        RandSectord(keys=("image", "label"), prob=0.3),
        RandAffined(keys=("image", "label"), prob=0.8, rotate_range=0.2, scale_range=0.25,
                    translate_range=(32, 24), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandLowResolutiond(keys="image", prob=0.35),
        RandAdjustContrastd(keys="image", prob=0.4, gamma=(0.6, 1.6)),
        RandScaleIntensityd(keys="image", prob=0.4, factors=0.3),
        RandSpeckled(keys="image", prob=0.3),
        RandGaussianSmoothd(keys="image", prob=0.25, sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5)),
        RandGaussianNoised(keys="image", prob=0.2, std=0.03),
        UnitClipd(keys="image"),
    ])
