"""Pack what qat.py needs into one file that travels to a GPU machine without Sonoloop's
dependencies: the CAMUS training and validation frames prepared exactly as at inference
(images rounded to uint8 to fit the transfer limit, label maps letterboxed alike) and every
third frame of pydicom-data's 120-frame cine, prepared as the worker prepares it.

    .venv/bin/python docs/experiments/int8-qat/pack.py ../shared/data/camus .q8/data.npz

The output holds CAMUS-derived data (CC BY-NC-SA 4.0): keep it out of the repository.
"""

import sys
from pathlib import Path

import numpy as np

from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.ml.data import camus_frames
from sonoloop.ml.preprocess import letterbox_labels, prepare, region_box

SIZE = 384


def main(camus: str, target: str) -> None:
    frames = camus_frames(Path(camus))
    packed = {}
    for split in ("training", "validation"):
        images, labels = [], []
        for frame in (f for f in frames if f.split == split):
            image, truth = frame.load()
            x, geometry = prepare(image, SIZE)
            images.append(np.round(x * 255).astype(np.uint8))
            labels.append(letterbox_labels(truth, geometry).astype(np.uint8))
        packed[f"{split}_x"], packed[f"{split}_y"] = np.stack(images), np.stack(labels)
    cine, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
    box = region_box(header.get("SequenceOfUltrasoundRegions"), cine.shape[1], cine.shape[2])
    packed["cine"] = np.stack([prepare(f, SIZE, box)[0] for f in cine[::3]]).astype(np.float16)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, **packed)


def usage_or_exit(argv: list[str], needed: int) -> None:
    """Exit with the docstring (its usage) when arguments are missing."""
    if len(argv) < needed + 1:
        sys.exit(__doc__)


if __name__ == "__main__":
    usage_or_exit(sys.argv, 2)
    main(*sys.argv[1:3])
