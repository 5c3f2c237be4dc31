"""Static int8 quantization of the shipped model with ONNX Runtime, against torch.compile + bf16
(what ``auto`` runs today) in the same run: time per frame, agreement with fp32, CAMUS Dice.

    .venv/bin/python benchmarks/int8.py --camus ../shared/data/camus [--format qoperator|qdq]
                                        [--every 4] [--repeats 8]

The network is exported to ONNX (as the ``onnx`` engine does), pre-processed with ONNX
Runtime's shape inference, and quantized statically: int8 weights per output channel,
uint8 activations calibrated (min/max) on every --every-th CAMUS *training* frame. Then:
- single-frame latency (median of --repeats) of int8 and of ``compile-bf16``, twice,
  interleaved, and their ratio (issue 15's target: int8 ≤ 0.55× compile-bf16);
- Dice of int8's label maps against fp32 eager's on pydicom-data's 120-frame cine, per
  class (target ≥ 0.995);
- CAMUS validation Dice against the experts for fp32 and int8 (target: within 0.005).
Nothing here is used by Sonoloop's engines: it measures whether an int8 engine would pay.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from inference import camus_dice, camus_inputs, label_dice  # noqa: E402

from sonoloop.dicom.pixels import all_frames  # noqa: E402
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path  # noqa: E402
from sonoloop.ml.data import camus_frames, select  # noqa: E402
from sonoloop.ml.engines import build_engine  # noqa: E402
from sonoloop.ml.modelfolder import load_model, resolve_model  # noqa: E402
from sonoloop.ml.preprocess import prepare, region_box  # noqa: E402


def quantized_session(network, size: int, calibration: list[np.ndarray], fmt: str, work: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network.cpu().eval(), (torch.zeros(1, 1, size, size),), buffer, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    (work / "fp32.onnx").write_bytes(buffer.getvalue())
    quant_pre_process(str(work / "fp32.onnx"), str(work / "pre.onnx"))

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": x[None, None].astype(np.float32)} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(work / "pre.onnx"), str(work / "int8.onnx"), Frames(),
                    quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(work / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    return lambda batch: torch.softmax(torch.from_numpy(
        session.run(None, {"image": np.ascontiguousarray(batch, np.float32)})[0]), dim=1)


def per_frame(engine, frame: np.ndarray, repeats: int) -> float:
    engine(frame)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        engine(frame)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def labels(engine, batch: np.ndarray) -> np.ndarray:
    return torch.cat([engine(batch[i: i + 4]) for i in range(0, len(batch), 4)]).argmax(1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--camus", required=True, help="the CAMUS frames folder (calibration and validation)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--format", choices=("qoperator", "qdq"), default="qoperator")
    parser.add_argument("--every", type=int, default=4, help="calibrate on every n-th training frame")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args(argv)
    network, description = load_model(resolve_model(args.model))
    size = int(description["preprocessing"]["size"])
    camus = Path(args.camus)
    calibration = [prepare(f.load()[0], size)[0] for f in select(camus_frames(camus), "training")][:: args.every]
    with tempfile.TemporaryDirectory() as work:
        began = time.perf_counter()
        int8 = quantized_session(network, size, calibration, args.format, Path(work))
        print(f"quantized ({args.format}, per-channel int8 weights, uint8 activations) on {len(calibration)} "
              f"CAMUS training frames in {time.perf_counter() - began:.0f} s")
        frames, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
        box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
        cine = np.stack([prepare(f, size, box)[0] for f in frames])[:, None]
        fp32 = build_engine("fp32", network, size)
        bf16 = build_engine("compile-bf16", network, size)
        timings = {"compile-bf16": [], "int8": []}
        for _ in range(2):  # interleaved, so that neither gets the quieter moment
            for name, engine in (("compile-bf16", bf16), ("int8", int8)):
                timings[name].append(per_frame(engine, cine[:1], args.repeats))
        t_bf16, t_int8 = (min(timings[k]) for k in ("compile-bf16", "int8"))
        print(f"per frame: compile-bf16 {t_bf16 * 1000:.1f} ms, int8 {t_int8 * 1000:.1f} ms, "
              f"ratio {t_int8 / t_bf16:.2f} (target ≤ 0.55)")
        agreement = label_dice(labels(int8, cine), labels(fp32, cine), len(description["classes"]))
        print("cine, int8 vs fp32 Dice per class: " + ", ".join(f"{d:.4f}" for d in agreement) + " (target ≥ 0.995)")
        images, truths = camus_inputs(camus, size)
        reference, quantized = camus_dice(labels(fp32, images), truths), camus_dice(labels(int8, images), truths)
        for name in reference:
            print(f"CAMUS validation {name}: fp32 {reference[name]:.4f}, int8 {quantized[name]:.4f} "
                  f"(Δ {quantized[name] - reference[name]:+.4f}; target within 0.005)")
        ok = (t_int8 <= 0.55 * t_bf16 and min(agreement) >= 0.995
              and all(abs(quantized[k] - reference[k]) <= 0.005 for k in reference))
        print(f"an int8 engine would {'pay' if ok else 'NOT pay'} on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
