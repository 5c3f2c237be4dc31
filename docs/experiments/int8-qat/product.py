"""Does int8 change what the clinician sees? Agreement of int8 with fp32 at three levels.

    .venv/bin/python docs/experiments/int8-qat/product.py ../shared/data/camus [--model default]

`benchmarks/int8.py` compares the network's raw argmax in its own 384×384 space. What
Sonoloop stores is further on: the probabilities mapped back to the frame, the model
folder's post-processing (largest component, filled cavities), the probabilities smoothed
over time (σ = 50 ms) and implausible frames repaired, then ED/ES and EF. This runs the
shipped model's ONNX Runtime fp32 engine (what ``auto`` runs on CPUs without native bf16)
and the same network quantized as `int8.py --format qdq` does, through
`echo.analyse.analyse_loop` on pydicom-data's 120-frame cine, and compares:
1. the network's raw labels (network space, as int8.py);
2. the labels frame by frame in the frame's geometry, post-processed (``FRAME_BY_FRAME``);
3. the labels the worker stores (the default ``PipelineSettings``), and the measurements.
It also times the two engines on single frames, interleaved, and each whole loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
from inference import label_dice  # noqa: E402
from int8 import labels as raw_labels, per_frame, quantized_session  # noqa: E402

from sonoloop.dicom.pixels import all_frames  # noqa: E402
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path  # noqa: E402
from sonoloop.echo.analyse import FRAME_BY_FRAME, PipelineSettings, analyse_loop  # noqa: E402
from sonoloop.ml.data import camus_frames, select  # noqa: E402
from sonoloop.ml.infer import Segmenter  # noqa: E402
from sonoloop.ml.modelfolder import resolve_model  # noqa: E402
from sonoloop.ml.preprocess import prepare, region_box  # noqa: E402

FIELDS = ("ed_frame", "es_frame", "edv", "esv", "ef", "ef_disks", "la_volume", "implausible_frames", "reliable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("camus", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--every", type=int, default=4, help="calibrate on every n-th training frame")
    args = parser.parse_args(argv)
    segmenter = Segmenter(resolve_model(args.model), engine="onnx")
    fp32 = segmenter.engine
    calibration = [prepare(f.load()[0], segmenter.size)[0]
                   for f in select(camus_frames(args.camus), "training")][:: args.every]
    frames, header, bits = all_frames(sample_path(ECHO_CINE_JPEG), luma=True)  # as the worker decodes
    classes = len(segmenter.classes)
    with tempfile.TemporaryDirectory() as work:
        int8 = quantized_session(segmenter.network, segmenter.size, calibration, "qdq", Path(work))
        box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
        cine = np.stack([prepare(f, segmenter.size, box)[0] for f in frames])[:, None]
        times = {"fp32": [], "int8": []}
        for _ in range(3):  # interleaved: this machine's speed drifts within minutes
            for name, engine in (("fp32", fp32), ("int8", int8)):
                times[name].append(per_frame(engine, cine[:1], 10))
        print(f"0. network alone per frame (best of three medians of 10): fp32 {min(times['fp32']) * 1000:.0f} ms, "
              f"int8 {min(times['int8']) * 1000:.0f} ms, ratio {min(times['int8']) / min(times['fp32']):.2f}")
        raw = label_dice(raw_labels(int8, cine), raw_labels(fp32, cine), classes)
        print("1. network space, raw argmax: " + " / ".join(f"{d:.4f}" for d in raw))
        for level, settings in (("2. frame by frame, mapped back, post-processed", FRAME_BY_FRAME),
                                ("3. as stored (smoothed over time, repaired)", PipelineSettings())):
            results = {}
            for name, engine in (("fp32", fp32), ("int8", int8)):
                segmenter.engine = engine
                began = time.perf_counter()
                results[name] = analyse_loop(frames, header, bits, segmenter, settings=settings)
                print(f"   {name}: {time.perf_counter() - began:.1f} s")
            dice = label_dice(results["int8"].labels, results["fp32"].labels, classes)
            frames_differing = int((results["int8"].labels != results["fp32"].labels).any(axis=(1, 2)).sum())
            print(f"{level}: " + " / ".join(f"{d:.4f}" for d in dice)
                  + f" (frames with any difference: {frames_differing} of {len(frames)})")
            for name in ("fp32", "int8"):
                m = results[name].measurements
                print(f"   {name}: " + ", ".join(f"{k} {_short(m.get(k))}" for k in FIELDS))
    return 0


def _short(value):
    return f"{value:.2f}" if isinstance(value, float) else value


if __name__ == "__main__":
    sys.exit(main())
