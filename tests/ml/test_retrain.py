"""Retraining from expert corrections: mixing strategies and the recorded provenance."""

import json

import pytest

from sonoloop.ml.data import camus_frames, select
from sonoloop.ml.retrain import AnnotatedFrame, RetrainError, mix, ratio_for, retrain
from sonoloop.ml.spec import TINY_ARCHITECTURE, TINY_PREPROCESSING
from sonoloop.ml.train import TrainConfig, export_best, train


@pytest.fixture(scope="module")
def tiny_parent(camus_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("parent")
    frames = camus_frames(camus_dir)
    config = TrainConfig(architecture=dict(TINY_ARCHITECTURE), preprocessing=dict(TINY_PREPROCESSING), epochs=1,
                         batch_size=4, augment=False)
    training, validation = select(frames, "training", 4), select(frames, "validation", 2)
    history = train(training, validation, config, folder / "work", progress=False)
    return export_best(folder / "work", folder / "tiny-v1", config, history, training, validation,
                       name="tiny-v1", data_source="CAMUS")


def annotated_from(frames):
    """Real CAMUS frames and their expert masks standing in for a hospital's approved annotations."""
    return [AnnotatedFrame(f"1.2.3.{f.patient}#1@v1", f"hospital-{f.patient}", *f.load()) for f in frames]


def test_strategies_mix_the_papers_ratios_deterministically(camus_dir):
    originals = select(camus_frames(camus_dir), "training")
    annotated = list(range(25))  # 25 annotations, as case G in the paper
    assert ratio_for("annotations-only") == 0 and ratio_for("equal") == 1 and ratio_for("two-to-one") == 2
    assert ratio_for("ratio", 0.5) == 0.5
    with pytest.raises(RetrainError, match="unknown mixing strategy"):
        ratio_for("half")
    assert mix(annotated, originals, 0, seed=0) == []
    assert len(mix(annotated, originals, 1, seed=0)) == 25 and len(mix(annotated, originals, 2, seed=0)) == 50
    assert mix(annotated, originals, 2, seed=0) == mix(annotated, list(reversed(originals)), 2, seed=0)
    assert mix(annotated, originals, 2, seed=0) != mix(annotated, originals, 2, seed=1)
    assert len(mix(annotated, originals[:10], 2, seed=0)) == 10  # fewer originals than asked: all of them


def test_retraining_records_exactly_the_data_it_used(camus_dir, tiny_parent, tmp_path):
    frames = camus_frames(camus_dir)
    annotated = annotated_from(select(frames, "validation")[4:7])
    originals = select(frames, "training")[8:40]
    tuning = select(frames, "training")[:4]
    versions = [{"annotation": 7, "version": 1, "instance": "1.2.3", "frames": [1]}]
    out = retrain(tiny_parent, annotated, originals, tuning, strategy="two-to-one", ratio=None,
                  config=TrainConfig(epochs=1, batch_size=4, augment=False), work_dir=tmp_path / "work",
                  out=tmp_path / "tiny-v2", name="tiny-v2", annotation_versions=versions, data_source="test")
    meta = json.loads((out / "model.json").read_text())
    record = meta["training"]["retraining"]
    assert meta["parent"] == "tiny-v1" and meta["architecture"] == json.loads(
        (tiny_parent / "model.json").read_text())["architecture"]
    assert record["strategy"] == "two-to-one" and record["annotations"] == versions
    assert record["annotated_frames"] == [f.frame_id for f in annotated]
    assert record["original_frames"] == [f.frame_id for f in mix(annotated, originals, 2, seed=0)]
    assert len(record["original_frames"]) == 6
    assert meta["training"]["train_frames"] == record["annotated_frames"] + record["original_frames"]
    assert meta["training"]["validation_frames"] == [f.frame_id for f in tuning]
    assert not (tmp_path / "work").exists()

    with pytest.raises(RetrainError, match="never overwritten"):
        retrain(tiny_parent, annotated, originals, tuning, strategy="equal", ratio=None, config=TrainConfig(epochs=1),
                work_dir=tmp_path / "w2", out=out, name="again", annotation_versions=versions, data_source="test")
    with pytest.raises(RetrainError, match="no approved annotations"):
        retrain(tiny_parent, [], originals, tuning, strategy="equal", ratio=None, config=TrainConfig(epochs=1),
                work_dir=tmp_path / "w3", out=tmp_path / "v3", name="v3", annotation_versions=[], data_source="t")


def test_a_run_stopped_midway_writes_no_version(camus_dir, tiny_parent, tmp_path):
    frames = camus_frames(camus_dir)
    annotated = annotated_from(select(frames, "validation")[4:6])

    def cancel(report):
        raise KeyboardInterrupt("cancelled")

    with pytest.raises(KeyboardInterrupt):
        retrain(tiny_parent, annotated, [], select(frames, "training")[:2], strategy="annotations-only", ratio=None,
                config=TrainConfig(epochs=3, augment=False), work_dir=tmp_path / "work", out=tmp_path / "v2",
                name="v2", annotation_versions=[], data_source="t", on_epoch=cancel)
    assert not (tmp_path / "v2").exists() and not (tmp_path / "work").exists()
    assert not list(tmp_path.glob(".v2-*"))
