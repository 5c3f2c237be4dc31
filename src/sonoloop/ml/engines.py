"""Ways to run a trained network: PyTorch eager in fp32 (the reference), bf16 autocast,
``torch.compile`` and ONNX Runtime. Each takes a float32 batch (N, 1, S, S) and returns
float32 class probabilities (N, C, S, S); ``benchmarks/inference.py`` measures their speed
and their agreement with the reference on the trained model.

``auto`` picks the fastest engine that agreed with fp32 in that benchmark (2-core AMD EPYC
with avx512_bf16, 2026-11-27: fp32 eager 255 ms/frame, ONNX Runtime 159, torch.compile 144,
bf16 autocast 94, torch.compile + bf16 75, every class's Dice against fp32 ≥ 0.998):
``compile-bf16`` where the CPU computes bf16 natively, falling back to ``bf16`` when
torch.compile cannot build (no C++ compiler) and to ONNX Runtime (fp32 arithmetic) on CPUs
without native bf16, where bf16 would be emulated and slow; ``bf16`` on a GPU.
"""

from __future__ import annotations

import io
import logging
import warnings
from functools import lru_cache

import numpy as np
import torch

from .spec import ENGINES

log = logging.getLogger("sonoloop.ml")

# glibc malloc settings for a process that runs a network frame after frame (see keep_freed_memory)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: blocks above it are still mapped and unmapped each time
TRIM_THRESHOLD_BYTES = 1 << 30


class EngineError(ValueError):
    """An engine that cannot run here; the message says why."""


def resolve(name: str, device: str) -> str:
    if name not in ENGINES:
        raise EngineError(f"unknown inference engine {name!r}; use one of {', '.join(ENGINES)}")
    if name != "auto":
        return name
    return _auto_order(device)[0]


def _auto_order(device: str) -> list[str]:
    """What ``auto`` tries, best first."""
    if device.startswith("cuda"):
        return ["bf16", "fp32"]
    order = ["compile-bf16", "bf16"] if cpu_has_native_bf16() else []
    return order + (["onnx"] if onnxruntime_available() else []) + ["fp32"]


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class TorchEngine:
    """Eager PyTorch, optionally under bf16 autocast and/or ``torch.compile``."""

    def __init__(self, network: torch.nn.Module, device: str = "cpu", bf16: bool = False, compile: bool = False):
        self.device, self.bf16 = device, bf16
        self.name = ("compile-" if compile else "") + ("bf16" if bf16 else "fp32")
        network = network.to(device).eval()
        self.module = torch.compile(network, dynamic=False) if compile else network

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.module(x)
        return torch.softmax(logits.float(), dim=1).cpu()


class OnnxEngine:
    """The network exported to ONNX (dynamic batch) and run by ONNX Runtime on the CPU."""

    name = "onnx"

    def __init__(self, network: torch.nn.Module, size: int, threads: int | None = None):
        if not onnxruntime_available():
            raise EngineError("the onnx engine needs the onnx and onnxruntime packages")
        import onnxruntime as ort

        buffer = io.BytesIO()
        example = torch.zeros(1, 1, size, size)
        with warnings.catch_warnings():
            # instance norm always normalises by the frame's own statistics; the exporter's
            # "train=True" warning about it is expected
            warnings.filterwarnings("ignore", message=".*instance_norm.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript-based exporter's own
            torch.onnx.export(network.cpu().eval(), (example,), buffer, input_names=["image"],
                              output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        (logits,) = self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})
        return torch.softmax(torch.from_numpy(logits), dim=1)


@lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a forward pass frees for the next one, instead of
    handing it back to the kernel; True where it took effect (glibc only).

    By default glibc maps blocks of a few MB (the network's activations) afresh and unmaps
    them when freed, or trims them off the heap: every frame then touched ~35 MB of new
    pages, ~9,000 page faults a frame (1.1 million for the 120-frame cine, in the worker
    and in a plain predict alike), each page zeroed by the kernel. With a fixed mapping
    threshold of 32 MB and a trim threshold of 1 GB the pages stay and are reused: 0 faults
    after the first frames, the same peak memory, and 40 frames 8.6 → 7.7 s (medians of
    three runs each, 2 cores; benchmarks/pipeline.py measures the whole loop). The process
    keeps its peak (~0.75 GB for the shipped model) instead of returning it between frames.
    Process-wide and permanent, like the engine's own threads."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)) and mapped


def build_engine(name: str, network: torch.nn.Module, size: int, device: str = "cpu"):
    """The engine, warmed up on one frame (torch.compile compiles then, not on the first echo).
    With ``auto``, an engine that cannot be built here gives way to the next best. On the CPU
    the process's allocator is first set to keep freed memory (``keep_freed_memory``)."""
    if device == "cpu":
        keep_freed_memory()
    if name != "auto":
        resolve(name, device)  # refuses unknown names
        return _build(name, network, size, device)
    order = _auto_order(device)
    for candidate in order:
        try:
            return _build(candidate, network, size, device)
        except Exception as exc:  # e.g. torch.compile without a C++ compiler
            if candidate == order[-1]:
                raise
            log.warning("inference engine %s cannot run here (%s: %s); trying the next", candidate,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    raise EngineError("no inference engine can run here")  # not reached: the last one raises


def _build(name: str, network: torch.nn.Module, size: int, device: str):
    if name == "onnx":
        if device != "cpu":
            raise EngineError("the onnx engine runs on the CPU only")
        engine = OnnxEngine(network, size)
    else:
        engine = TorchEngine(network, device, bf16=name.endswith("bf16"), compile=name.startswith("compile"))
    engine(np.zeros((1, 1, size, size), dtype=np.float32))
    return engine


class FlipAveraged:
    """Test-time augmentation: the class probabilities of each frame and of its left–right
    mirror image (flipped back) averaged. Two network passes per frame."""

    def __init__(self, engine):
        self.inner = engine
        self.name = f"{engine.name}+flip"

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        plain = self.inner(batch)
        mirrored = self.inner(np.ascontiguousarray(batch[..., ::-1]))
        return (plain + torch.flip(mirrored, dims=[-1])) / 2
