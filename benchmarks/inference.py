"""Inference speed of the segmentation network on this machine's CPU, per engine, in one run.

    .venv/bin/python benchmarks/inference.py [--model default] [--engines fp32,bf16,onnx,...]
                                             [--repeats 10] [--chunk 4] [--camus ../shared/data/camus]

For each engine (``sonoloop.ml.engines``): the time to build it, per-frame latency for a
single frame (batch 1, median of --repeats) and for the real 120-frame apical 4-chamber cine
from pydicom-data run in chunks of --chunk frames, the speed-up against PyTorch eager fp32
measured beside it, and its agreement with eager fp32 on the trained model: the largest
|Δ softmax| over all pixels and the smallest per-class Dice between the two label maps
(cine frames, plus the CAMUS validation frames when --camus is given). With --camus it
also prints each engine's CAMUS-style Dice against the experts' labels.

The network's FLOPs per frame (convolutions, counted by hooks) and the best large-GEMM
FLOP/s this CPU reaches (2048² torch.mm in fp32 and bf16, ONNX Runtime MatMul in fp32) are
measured in the same run, so each engine's achieved FLOP/s is shown as a fraction of it.

The engine ``auto`` selects (``sonoloop.ml.engines.resolve``) must be the fastest one that
keeps every class's Dice against fp32 ≥ 1 - --dice-bound (0.005): the last line says
whether it is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sonoloop.dicom.pixels import all_frames
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.ml.modelfolder import resolve_model
from sonoloop.ml.engines import ENGINES, build_engine, resolve
from sonoloop.ml.modelfolder import load_model
from sonoloop.ml.metrics import dice, mean
from sonoloop.ml.preprocess import prepare, region_box


def conv_flops(network: torch.nn.Module, size: int) -> float:
    """Multiply-adds ×2 of every convolution for one frame."""
    total = 0.0

    def hook(module, inputs, output):
        nonlocal total
        kernel = int(np.prod(module.kernel_size))
        in_per_group = module.in_channels // module.groups
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel scatters a kernel
            total += 2.0 * inputs[0].numel() * module.out_channels * kernel / module.groups
        else:
            total += 2.0 * output.numel() * in_per_group * kernel

    handles = [m.register_forward_hook(hook) for m in network.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.inference_mode():
        network(torch.zeros(1, 1, size, size))
    for h in handles:
        h.remove()
    return total


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def gemm_peaks(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    flops = 2.0 * n ** 3
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
        peaks[f"torch.mm {str(dtype).split('.')[1]}"] = flops / best_of(lambda: torch.mm(a, b), repeats)
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
                                  [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"a": np.random.rand(n, n).astype(np.float32), "b": np.random.rand(n, n).astype(np.float32)}
        peaks["onnxruntime MatMul float32"] = flops / best_of(lambda: session.run(None, feeds), repeats)
        del onnx
    except ImportError:
        pass
    return peaks


def label_dice(a: np.ndarray, b: np.ndarray, classes: int) -> list[float]:
    """Per class, how far two engines' label maps agree (a class neither has agrees fully)."""
    scores = [dice(a == c, b == c) for c in range(1, classes)]
    return [1.0 if s is None else s for s in scores]


def run_chunked(engine, batch: np.ndarray, chunk: int) -> torch.Tensor:
    return torch.cat([engine(batch[i: i + chunk]) for i in range(0, len(batch), chunk)])


def camus_inputs(camus: Path, size: int):
    from sonoloop.ml.data import camus_frames, select
    from sonoloop.ml.preprocess import letterbox_labels

    images, truths = [], []
    for frame in select(camus_frames(camus), "validation"):
        image, labels = frame.load()
        x, geometry = prepare(image, size)
        images.append(x)
        truths.append(letterbox_labels(labels, geometry))
    return np.stack(images)[:, None], np.stack(truths)


def camus_dice(labels: np.ndarray, truths: np.ndarray) -> dict[str, float]:
    """CAMUS structures (LV endo = 1, LV epi = 1∪2, LA = 3), mean over frames, network space."""
    structures = {"LV endo": (1,), "LV epi": (1, 2), "LA": (3,)}
    return {name: mean(dice(np.isin(p, members), np.isin(t, members)) for p, t in zip(labels, truths))
            for name, members in structures.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--engines", default="fp32,bf16,onnx,compile,compile-bf16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=1, help="frames per network call for the cine loop")
    parser.add_argument("--chunks", default="1,2,4,8,16", help="chunk sizes swept for the auto engine")
    parser.add_argument("--camus", help="CAMUS frames folder: agreement and Dice on its validation frames too")
    parser.add_argument("--dice-bound", type=float, default=0.005)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES or e == "auto"]
    if unknown:
        parser.error(f"unknown engines {unknown}; choose from {', '.join(e for e in ENGINES if e != 'auto')}")
    if "fp32" not in engines:
        engines.insert(0, "fp32")

    folder = resolve_model(args.model)
    network, description = load_model(folder)
    size = int(description["preprocessing"]["size"])
    classes = len(description["classes"])
    frames, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
    box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
    cine = np.stack([prepare(f, size, box)[0] for f in frames])[:, None]
    single = cine[:1]
    camus = camus_inputs(Path(args.camus), size) if args.camus else None

    print(f"model {description.get('name')} ({folder}); input {size}²; cine {ECHO_CINE_JPEG}: {len(cine)} frames; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    flops = conv_flops(network, size)
    peaks = gemm_peaks()
    print(f"network: {flops / 1e9:.2f} GFLOP per frame (convolutions)")
    for name, value in peaks.items():
        print(f"large GEMM 2048²: {name} {value / 1e9:.0f} GFLOP/s")

    results, reference = {}, {}
    for name in engines:
        began = time.perf_counter()
        engine = build_engine(name, network, size)
        engine(single)  # first call: compilation, graph optimisation, allocator warm-up
        engine(cine[: args.chunk])
        build = time.perf_counter() - began
        single_s = statistics.median(_timed(lambda: engine(single)) for _ in range(args.repeats))
        began = time.perf_counter()
        probabilities = run_chunked(engine, cine, args.chunk)
        cine_s = (time.perf_counter() - began) / len(cine)
        row = {"build_s": round(build, 2), "single_ms": round(single_s * 1e3, 1), "cine_ms": round(cine_s * 1e3, 1)}
        sets = {"cine": probabilities}
        if camus is not None:
            sets["camus"] = run_chunked(engine, camus[0], args.chunk)
            row["camus_dice"] = {k: round(v, 4) for k, v in camus_dice(sets["camus"].argmax(1).numpy(), camus[1]).items()}
        if name == "fp32":
            reference = sets
        worst_delta, worst_dice = 0.0, 1.0
        for key, p in sets.items():
            worst_delta = max(worst_delta, float((p - reference[key]).abs().max()))
            worst_dice = min(worst_dice, min(label_dice(p.argmax(1).numpy(), reference[key].argmax(1).numpy(), classes)))
        row.update(max_abs_delta_softmax=round(worst_delta, 5), min_class_dice_vs_fp32=round(worst_dice, 5),
                   agrees=worst_dice >= 1 - args.dice_bound)
        best_ms = min(row["single_ms"], row["cine_ms"])
        row["gflops"] = round(flops / (best_ms / 1e3) / 1e9, 1)
        peak_key = "torch.mm bfloat16" if name.endswith("bf16") else max(
            (k for k in peaks if "bfloat16" not in k), key=lambda k: peaks[k])
        row["fraction_of_gemm_peak"] = round(flops / (best_ms / 1e3) / peaks[peak_key], 3)
        row["peak"] = peak_key
        results[name] = row
        print(f"  {name}: built in {row['build_s']} s, 1 frame {row['single_ms']} ms, cine {row['cine_ms']} ms/frame",
              flush=True)

    base = results["fp32"]
    print()
    print("| engine | build s | 1 frame ms | cine ms/frame | ×fp32 (1 / cine) | GFLOP/s | of GEMM peak | "
          "max abs Δsoftmax | min class Dice vs fp32 | agrees |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        r["speedup_single"] = round(base["single_ms"] / r["single_ms"], 2)
        r["speedup_cine"] = round(base["cine_ms"] / r["cine_ms"], 2)
        print(f"| {name} | {r['build_s']} | {r['single_ms']} | {r['cine_ms']} | {r['speedup_single']} / "
              f"{r['speedup_cine']} | {r['gflops']} | {r['fraction_of_gemm_peak']:.0%} of {r['peak']} | "
              f"{r['max_abs_delta_softmax']} | {r['min_class_dice_vs_fp32']} | {'yes' if r['agrees'] else 'NO'} |")
    if camus is not None:
        print()
        print("CAMUS validation frames, Dice against the experts (network space, no post-processing):")
        for name, r in results.items():
            print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["camus_dice"].items()))

    auto = resolve("auto", "cpu")
    sweep = {}
    if auto in results:
        engine = build_engine(auto, network, size)
        for chunk in [int(c) for c in args.chunks.split(",") if c]:
            engine(cine[:chunk])
            began = time.perf_counter()
            run_chunked(engine, cine, chunk)
            sweep[chunk] = round((time.perf_counter() - began) / len(cine) * 1e3, 1)
        print()
        print(f"cine chunk sizes with {auto}: " + ", ".join(f"{c} → {ms} ms/frame" for c, ms in sweep.items()))
    agreeing = {n: r for n, r in results.items() if r["agrees"]}
    fastest = min(agreeing, key=lambda n: agreeing[n]["cine_ms"])
    print()
    print(f"fastest engine within the agreement bound (cine): {fastest} ({agreeing[fastest]['cine_ms']} ms/frame, "
          f"{agreeing[fastest]['speedup_cine']}× fp32); 'auto' selects {auto} here"
          + ("" if auto == fastest else f" — NOT the fastest ({results.get(auto, {}).get('cine_ms')} ms/frame)"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": description.get("name"), "flops_per_frame": flops, "gemm_peaks": peaks, "engines": results,
            "chunk_sweep_ms": sweep, "auto": auto, "fastest_agreeing": fastest, "threads": torch.get_num_threads(),
        }, indent=2))
    return 0


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


if __name__ == "__main__":
    sys.exit(main())
