"""Which layers' int8 quantization moves the shipped model's labels on the cine? Simulates
ONNX Runtime's static QDQ quantization (uint8 activations, min/max calibrated on every 8th
CAMUS training frame; int8 weights, symmetric per output channel) in PyTorch, on all
convolutions together and on each one alone, and prints the label Dice against fp32 on
every sixth frame of the cine (LV, MYO, LA); first, how many of the pixels labelled
myocardium are near a tie. On the CPU, ~6 minutes.

    .venv/bin/python docs/experiments/int8-qat/sensitivity.py ../shared/data/camus [perlayer.json]
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from inference import label_dice  # noqa: E402

from sonoloop.dicom.pixels import all_frames  # noqa: E402
from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path  # noqa: E402
from sonoloop.ml.data import camus_frames, select  # noqa: E402
from sonoloop.ml.modelfolder import load_model, resolve_model  # noqa: E402
from sonoloop.ml.preprocess import prepare, region_box  # noqa: E402

SIZE = 384


def main(camus: str, target: str | None = None) -> None:
    network, _ = load_model(resolve_model("default"))
    network = network.float().eval()
    calibration = np.stack([prepare(f.load()[0], SIZE)[0] for f in select(camus_frames(Path(camus)), "training")][::8])
    frames, header, _ = all_frames(sample_path(ECHO_CINE_JPEG))
    box = region_box(header.get("SequenceOfUltrasoundRegions"), frames.shape[1], frames.shape[2])
    cine = torch.from_numpy(np.stack([prepare(f, SIZE, box)[0] for f in frames[::6]])[:, None].astype(np.float32))
    convs = {n: m for n, m in network.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name):
        def hook(module, inputs):
            low, high = ranges.get(name, (0.0, 0.0))
            ranges[name] = (min(low, inputs[0].min().item()), max(high, inputs[0].max().item()))
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in convs.items()]
    with torch.inference_mode():
        for i in range(0, len(calibration), 4):
            network(torch.from_numpy(calibration[i: i + 4, None].astype(np.float32)))
    for handle in handles:
        handle.remove()

    def labels(net):
        with torch.inference_mode():
            return torch.cat([net(cine[i: i + 4]) for i in range(0, len(cine), 4)]).argmax(1).numpy()

    reference = labels(network)

    def hesitant(images, where):
        with torch.inference_mode():
            p = torch.cat([network(images[i: i + 4]).softmax(1) for i in range(0, len(images), 4)])
        top = p.topk(2, dim=1).values
        margin, myocardium = top[:, 0] - top[:, 1], p.argmax(1) == 2
        print(f"{where}: pixels labelled myocardium with a top-two probability margin below 0.05 / 0.1: "
              f"{float((margin[myocardium] < 0.05).float().mean()):.4f} / {float((margin[myocardium] < 0.1).float().mean()):.4f}")

    hesitant(cine, "cine")
    validation = [prepare(f.load()[0], SIZE)[0] for f in select(camus_frames(Path(camus)), "validation")]
    hesitant(torch.from_numpy(np.stack(validation)[:, None].astype(np.float32)), "CAMUS validation")

    def quantize_input(name):
        low, high = min(ranges[name][0], 0.0), ranges[name][1]
        scale = (high - low) / 255
        zero = round(-low / scale)
        return lambda module, inputs: ((torch.clamp(torch.round(inputs[0] / scale) + zero, 0, 255) - zero) * scale,)

    def quantized(only=lambda name: True, weights=True, activations=True):
        net = copy.deepcopy(network)
        for name, module in net.named_modules():
            if name not in convs or not only(name):
                continue
            if weights:
                w = module.weight.data
                keep = 1 if isinstance(module, torch.nn.ConvTranspose2d) else 0
                dims = tuple(k for k in range(w.dim()) if k != keep)
                step = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127
                module.weight.data = torch.round(w / step) * step
            if activations:
                module.register_forward_pre_hook(quantize_input(name))
        return [round(d, 4) for d in label_dice(labels(net), reference, 4)]

    print("weights only", quantized(activations=False))
    print("activations only", quantized(weights=False))
    print("both, every convolution", quantized())
    per_layer = {}
    for name in convs:
        per_layer[name] = quantized(only=lambda n, name=name: n == name)
        print(name, per_layer[name], flush=True)
    if target:
        Path(target).write_text(json.dumps(per_layer, indent=1) + "\n")


def usage_or_exit(argv: list[str], needed: int) -> None:
    """Exit with the docstring (its usage) when arguments are missing."""
    if len(argv) < needed + 1:
        sys.exit(__doc__)


if __name__ == "__main__":
    usage_or_exit(sys.argv, 1)
    main(*sys.argv[1:3])
