import json

import numpy as np
import pytest
import torch
from PIL import Image

from sonoloop.ml.data import DataError, camus_frames, patients, select
from sonoloop.ml.infer import Segmenter
from sonoloop.ml.modelfolder import ModelFolderError, load_model, save_model
from sonoloop.ml.network import build_network
from sonoloop.ml.spec import CLASSES, DEFAULT_ARCHITECTURE, TINY_ARCHITECTURE, TINY_PREPROCESSING
from sonoloop.ml.train import TrainConfig, export_best, train


def test_the_default_network_is_the_papers_unet():
    net = build_network(DEFAULT_ARCHITECTURE)
    out = net(torch.zeros(1, 1, 384, 384))
    assert out.shape == (1, 4, 384, 384)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 320
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 4


def test_model_folder_round_trip_and_clear_errors(tmp_path):
    net = build_network(TINY_ARCHITECTURE)
    description = {"name": "t", "architecture": TINY_ARCHITECTURE, "classes": CLASSES, "preprocessing": TINY_PREPROCESSING}
    x = torch.rand(1, 1, 64, 64)
    exact, _ = load_model(save_model(tmp_path / "fp32", net, description))
    assert torch.allclose(exact(x), net.eval()(x), atol=1e-6)
    folder = save_model(tmp_path / "v1", net, description, fp16=True)
    loaded, meta = load_model(folder)
    assert meta["weights"]["dtype"] == "float16"
    agreement = (loaded(x).argmax(1) == net(x).argmax(1)).float().mean()
    assert agreement > 0.98
    with pytest.raises(ModelFolderError, match="never overwritten"):
        save_model(folder, net, description)
    with pytest.raises(ModelFolderError, match="model.json is missing"):
        load_model(tmp_path)
    mismatched = json.loads((folder / "model.json").read_text())
    mismatched["architecture"]["filters"] = [8, 8, 16]
    (folder / "model.json").write_text(json.dumps(mismatched))
    with pytest.raises(ModelFolderError, match="wrong shape"):
        load_model(folder)
    (folder / "weights.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="weights file weights.safetensors is missing"):
        load_model(folder)


def test_camus_frames_are_split_by_patient(camus_dir):
    frames = camus_frames(camus_dir)
    training, validation = select(frames, "training"), select(frames, "validation")
    assert len(training) == 298 and len(validation) == 34
    assert not patients(training) & patients(validation)
    with pytest.raises(DataError, match="not a CAMUS frames folder"):
        camus_frames(camus_dir / "images")


def test_a_tiny_network_learns_on_real_frames_and_resumes(camus_dir, tmp_path):
    frames = camus_frames(camus_dir)
    train_frames = select(frames, "training", limit=8)
    val_frames = select(frames, "validation", limit=2)
    config = TrainConfig(architecture=TINY_ARCHITECTURE, preprocessing=TINY_PREPROCESSING, epochs=4, batch_size=4,
                         learning_rate=3e-3, augment=False)
    history = train(train_frames, val_frames, config, tmp_path / "work", progress=False)
    assert len(history) == 4
    assert history[-1].train_loss < history[0].train_loss
    config.epochs = 5
    resumed = train(train_frames, val_frames, config, tmp_path / "work", progress=False)
    assert [h.epoch for h in resumed] == [1, 2, 3, 4, 5]
    folder = export_best(tmp_path / "work", tmp_path / "model", config, resumed, train_frames, val_frames,
                         name="tiny", data_source=str(camus_dir))
    meta = json.loads((folder / "model.json").read_text())
    assert meta["training"]["train_frames"] == [f.frame_id for f in train_frames]
    image, _ = val_frames[0].load()
    labels = Segmenter(folder).predict(np.stack([image, image]))
    assert labels.shape == (2, *image.shape) and labels.dtype == np.uint8


def test_train_command_writes_a_model_folder_with_the_camus_notice(camus_dir, tmp_path):
    from sonoloop.cli import main

    out = tmp_path / "tiny-model"
    code = main(["train", "--data", str(camus_dir), "--out", str(out), "--tiny", "--epochs", "1", "--limit", "4",
                 "--no-augment", "--quiet"])
    assert code == 0
    assert "CC BY-NC-SA 4.0" in (out / "NOTICE").read_text()
    assert json.loads((out / "model.json").read_text())["architecture"] == TINY_ARCHITECTURE
    assert main(["train", "--data", str(camus_dir), "--out", str(out), "--tiny", "--quiet"]) == 2
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "x"), "--tiny", "--quiet"]) == 2


def test_evaluate_reports_camus_structures_by_phase(camus_dir, tmp_path):
    from sonoloop.cli import main

    model = tmp_path / "tiny"
    assert main(["train", "--data", str(camus_dir), "--out", str(model), "--tiny", "--epochs", "1", "--limit", "4",
                 "--no-augment", "--quiet"]) == 0
    report_path = tmp_path / "report.json"
    code = main(["evaluate", "--model", str(model), "--data", str(camus_dir), "--split", "validation", "--limit", "4",
                 "--json", str(report_path), "--markdown", str(tmp_path / "r.md"), "--png", str(tmp_path / "r.png")])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["frames"] == 4 and set(report["summary"]) >= {"all"}
    assert set(report["summary"]["all"]) == {"LV endo", "LV epi", "LA", "MYO"}
    assert 0.0 <= report["summary"]["all"]["LV epi"]["dice"] <= 1.0
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert "| phase |" in (tmp_path / "r.md").read_text()
    missing = main(["evaluate", "--model", str(tmp_path / "no-model"), "--data", str(camus_dir), "--json", str(tmp_path / "x")])
    assert missing == 2
    assert main(["evaluate", "--model", str(model), "--data", str(camus_dir), "--split", "validation", "--limit", "4",
                 "--json", str(tmp_path / "m.json"), "--mirror"]) == 0
    mirrored = json.loads((tmp_path / "m.json").read_text())
    assert mirrored["mirrored"] and mirrored["frames"] == 4
    assert main(["evaluate", "--model", str(model), "--data", str(camus_dir), "--split", "validation", "--limit", "4",
                 "--json", str(tmp_path / "low.json"), "--markdown", str(tmp_path / "low.md"),
                 "--resolution", "112"]) == 0
    low = json.loads((tmp_path / "low.json").read_text())
    assert low["resolution"] == 112 and low["frames"] == 4
    assert "resampled to 112 px" in (tmp_path / "low.md").read_text()


def test_frames_resampled_to_a_low_resolution_keep_their_labels_aligned(camus_dir):
    from sonoloop.ml.data import camus_frames
    from sonoloop.ml.evaluate import at_resolution
    from sonoloop.ml.metrics import dice

    image, truth = camus_frames(camus_dir)[0].load()
    small, small_truth = at_resolution(image, truth, 112)
    assert small.shape == small_truth.shape == (112, 112) and set(np.unique(small_truth)) <= {0, 1, 2, 3}
    back = np.asarray(Image.fromarray(small_truth).resize(truth.shape[::-1], Image.NEAREST))
    for c in (1, 2, 3):
        assert dice(back == c, truth == c) > 0.9
    # the image was averaged down, not sampled: its mean brightness is kept
    assert abs(float(small.mean()) - float(image.mean())) < 2.0


def test_the_ef_of_an_ed_es_pair_comes_from_the_area_length_volumes():
    from sonoloop.ml.evaluate import ef_pairs, ejection_fraction
    from tests.echo.test_measure import heart

    ed, es = heart(80, 40), heart(80, 28)
    assert ejection_fraction(ed, es) == pytest.approx(100 * (1 - (28 / 40) ** 2), abs=1.5)
    pairs = ef_pairs({("p1", "4CH"): {"ED": (ed, ed), "ES": (es, es)}, ("p2", "2CH"): {"ED": (ed, ed)}})
    assert len(pairs) == 1 and pairs[0]["error"] == 0 and pairs[0]["patient"] == "p1"


def test_dice_and_hd95_on_known_masks():
    from sonoloop.ml.evaluate import hd95
    from sonoloop.ml.metrics import dice

    a = np.zeros((50, 50), bool)
    a[10:20, 10:20] = True
    b = np.zeros((50, 50), bool)
    b[10:20, 15:25] = True
    assert dice(a, a) == 1.0 and dice(a, b) == pytest.approx(0.5)
    empty = np.zeros_like(a)
    assert dice(empty, empty) is None and dice(a, empty) == 0.0  # nothing to score is not a perfect score
    assert hd95(a, a) == 0.0 and 4.0 <= hd95(a, b) <= 5.0
    assert np.isnan(hd95(a, np.zeros_like(a)))


def test_predict_segments_every_frame_of_a_real_cine_in_its_own_geometry(camus_dir, tmp_path, samples):
    from PIL import Image

    from sonoloop.cli import main

    model = tmp_path / "tiny"
    assert main(["train", "--data", str(camus_dir), "--out", str(model), "--tiny", "--epochs", "1", "--limit", "4",
                 "--no-augment", "--quiet"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(samples["cine_jpeg"]), "--out", str(out), "--model", str(model)]) == 0
    masks = sorted(out.glob("mask-*.png"))
    assert len(masks) == 120
    assert np.asarray(Image.open(masks[0])).shape == (480, 640)
    assert (out / "overlay.png").exists()
    assert main(["predict", str(samples["sr"]), "--out", str(out), "--model", str(model)]) == 2
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(samples["us_native"].read_bytes()[:5000])
    assert main(["predict", str(broken), "--out", str(out), "--model", str(model)]) == 2


def test_poly_schedule_decays_to_zero_and_old_checkpoints_keep_their_fingerprint():
    config = TrainConfig(epochs=10, learning_rate=1e-3, lr_schedule="poly")
    rates = [config.learning_rate_at(e) for e in range(10)]
    assert rates[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 2e-4
    assert TrainConfig(learning_rate=1e-3).learning_rate_at(9) == 1e-3
    assert TrainConfig().fingerprint() != config.fingerprint()
    # a configuration that leaves the newer fields at their defaults hashes as before they existed
    assert TrainConfig(epochs=50, batch_size=4, learning_rate=1e-3, bf16=True).fingerprint() == "24708a1f72440c03"
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'"):
        TrainConfig(lr_schedule="cosine")


def test_fine_tuning_starts_from_the_parent_and_records_it(camus_dir, tmp_path):
    from sonoloop.cli import main

    parent = tmp_path / "parent"
    args = ["--data", str(camus_dir), "--tiny", "--epochs", "1", "--limit", "4", "--no-augment", "--quiet"]
    assert main(["train", "--out", str(parent), "--name", "tiny-v1", *args]) == 0
    child = tmp_path / "child"
    assert main(["train", "--out", str(child), "--name", "tiny-v2", "--init-from", str(parent), "--lr", "1e-9",
                 "--lr-schedule", "poly", *args]) == 0
    meta = json.loads((child / "model.json").read_text())
    assert meta["parent"] == "tiny-v1"
    assert meta["training"]["hyperparameters"]["lr_schedule"] == "poly"
    # with a vanishing learning rate the child is the parent's weights
    x = torch.rand(1, 1, 64, 64)
    assert torch.allclose(load_model(child)[0](x), load_model(parent)[0](x), atol=1e-4)
    assert main(["train", "--out", str(tmp_path / "x"), "--init-from", str(tmp_path / "nothing"), *args]) == 2
    assert main(["train", "--out", str(tmp_path / "y"), "--init-from", "default", *args]) == 2  # 384² U-Net ≠ tiny


def test_the_fast_class_argmax_is_torch_argmax_ties_included():
    from sonoloop.ml.infer import _argmax_over_classes

    x = torch.rand(4, 50, 60)
    x[2, :10] = x[1, :10]  # ties go to the first class, as torch.argmax
    x[3, 20:30] = x[0, 20:30]
    assert torch.equal(_argmax_over_classes(x), x.argmax(0).to(torch.uint8))
