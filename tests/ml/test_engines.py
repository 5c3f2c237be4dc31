import numpy as np
import pytest
import torch

from sonoloop.ml.engines import EngineError, FlipAveraged, OnnxEngine, TorchEngine, build_engine, resolve
from sonoloop.ml.infer import Segmenter
from sonoloop.ml.modelfolder import save_model
from sonoloop.ml.network import build_network
from sonoloop.ml.spec import CLASSES, TINY_ARCHITECTURE, TINY_PREPROCESSING


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_network(TINY_ARCHITECTURE).eval()


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.random((3, 1, 64, 64), dtype=np.float32)


def _reference(network, batch):
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(batch)), dim=1)


@pytest.mark.parametrize("name, tolerance", [("fp32", 1e-6), ("onnx", 1e-4), ("bf16", 0.05)])
def test_every_engine_returns_probabilities_that_agree_with_eager_fp32(tiny, batch, name, tolerance):
    engine = build_engine(name, tiny, 64)
    probabilities = engine(batch)
    assert probabilities.shape == (3, len(CLASSES), 64, 64) and probabilities.dtype == torch.float32
    assert torch.allclose(probabilities.sum(1), torch.ones(3, 64, 64), atol=1e-3)
    assert float((probabilities - _reference(tiny, batch)).abs().max()) < tolerance
    assert engine(batch[:1]).shape[0] == 1  # another batch size in the same engine


def test_torch_compile_engine_agrees(tiny, batch):
    probabilities = build_engine("compile", tiny, 64)(batch)
    assert float((probabilities - _reference(tiny, batch)).abs().max()) < 1e-4


def test_auto_picks_the_fastest_agreeing_engine_this_machine_has_and_refuses_bad_names(tiny, monkeypatch):
    from sonoloop.ml import engines

    if engines.cpu_has_native_bf16():
        assert resolve("auto", "cpu") == "compile-bf16"
        engine = build_engine("auto", tiny, 64)
        assert isinstance(engine, TorchEngine) and engine.name == "compile-bf16"
    else:
        assert resolve("auto", "cpu") == "onnx"
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    assert resolve("auto", "cpu") == "onnx"  # bf16 would be emulated: fp32 ONNX Runtime instead
    assert isinstance(build_engine("auto", tiny, 64), OnnxEngine)
    assert resolve("auto", "cuda:0") == "bf16"
    with pytest.raises(EngineError, match="unknown inference engine 'tensorrt'"):
        build_engine("tensorrt", tiny, 64)
    with pytest.raises(EngineError, match="CPU only"):
        build_engine("onnx", tiny, 64, device="cuda")


def test_auto_falls_back_when_an_engine_cannot_be_built(tiny, monkeypatch):
    from sonoloop.ml import engines

    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: True)
    real_build = engines._build

    def no_compiler(name, *args):
        if name.startswith("compile"):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return real_build(name, *args)

    monkeypatch.setattr(engines, "_build", no_compiler)
    assert build_engine("auto", tiny, 64).name == "bf16"


def test_segmenter_label_maps_are_the_same_with_onnx_and_eager(tiny, tmp_path):
    description = {"name": "t", "architecture": TINY_ARCHITECTURE, "classes": CLASSES, "preprocessing": TINY_PREPROCESSING}
    folder = save_model(tmp_path / "m", tiny, description)
    rng = np.random.default_rng(1)
    frames = (rng.random((5, 90, 120)) * 255).astype(np.uint8)
    onnx_labels = Segmenter(folder, engine="onnx").predict(frames)
    eager_labels = Segmenter(folder, engine="fp32").predict(frames)
    assert onnx_labels.shape == (5, 90, 120)
    assert (onnx_labels == eager_labels).mean() > 0.999


def test_flip_averaging_mixes_each_frame_with_its_mirror_image():
    class Ramp:  # class 1 grows from the left edge to the right, whatever the image
        name = "ramp"

        def __call__(self, batch):
            n, _, h, w = batch.shape
            ramp = torch.linspace(0, 1, w).expand(n, h, w)
            return torch.stack([1 - ramp, ramp], dim=1)

    averaged = FlipAveraged(Ramp())
    out = averaged(np.zeros((2, 1, 4, 5), np.float32))
    assert out.shape == (2, 2, 4, 5) and torch.allclose(out, torch.full_like(out, 0.5))
    assert averaged.name == "ramp+flip"


FORWARD_PASSES = """
import platform, resource, sys
import numpy as np
from sonoloop.ml import engines
from sonoloop.ml.network import build_network
from sonoloop.ml.spec import TINY_ARCHITECTURE
if platform.libc_ver()[0] != "glibc":
    print("not glibc"); sys.exit(0)
if sys.argv[1] == "default":
    engines.keep_freed_memory = lambda: False
engine = engines.build_engine("fp32", build_network(TINY_ARCHITECTURE).eval(), 256)
frame = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
counts = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    engine(frame)
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(" ".join(map(str, counts)))
"""


def test_a_cpu_engine_keeps_freed_memory_for_the_next_frame_instead_of_faulting_it_in_again():
    """Frame after frame, glibc's default hands the activations' pages back to the kernel and
    faults them in again (here ~1,100–2,900 page faults a frame for a tiny network on 256²);
    once a CPU engine is built, they stay."""
    import subprocess
    import sys

    def faults(allocator: str) -> list[int]:
        result = subprocess.run([sys.executable, "-c", FORWARD_PASSES, allocator], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        if result.stdout.strip() == "not glibc":
            pytest.skip("the allocator setting is for glibc only")
        return [int(n) for n in result.stdout.split()]

    # Medians over frames 5-20: a one-off event (a thread's first stack, a lazily built kernel)
    # may fault a few hundred pages once, on any allocator; the default faults on every frame.
    kept, default = faults("kept"), faults("default")
    assert np.median(kept[4:]) < 50, kept  # after the first frames, no new pages
    assert np.median(default[4:]) > 10 * max(50, np.median(kept[4:])), default  # what it saves
