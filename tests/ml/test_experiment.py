"""The paper's experiments: the modelled annotation style, and the quick run's plumbing end to end."""

import json

import numpy as np

from sonoloop.ml.data import camus_frames, select
from sonoloop.ml.experiment import LA, LV, MYO, groups, hospital_style


def test_the_hospital_style_grows_the_lv_thins_the_wall_and_narrows_the_la(camus_dir):
    for frame in select(camus_frames(camus_dir), "validation")[:4]:
        _, labels = frame.load()
        styled = hospital_style(labels)
        assert (styled == LV).sum() > (labels == LV).sum()
        assert (styled == MYO).sum() < (labels == MYO).sum()
        la, la_styled = np.nonzero(labels == LA)[1], np.nonzero(styled == LA)[1]
        assert la_styled.max() - la_styled.min() < la.max() - la.min()  # narrower
        assert np.array_equal(styled[labels == 0], labels[labels == 0])  # nothing drawn outside the heart
        assert np.array_equal(hospital_style(labels), styled)  # deterministic


def test_groups_are_distinct_patients_outside_the_held_out_set(camus_dir):
    sets = groups(camus_frames(camus_dir), 25, 8, 8)
    assert [len(sets[k]) for k in ("G", "E", "F")] == [25, 8, 8]
    patients = [f.patient for k in ("G", "E", "F") for f in sets[k]]
    assert len(set(patients)) == 41
    assert not set(patients) & {f.patient for f in sets["originals"]}
    assert not set(patients) & {f.patient for f in sets["heldout"]}
    assert all(f.split == "validation" for f in sets["heldout"])


def test_the_quick_paper_run_writes_report_results_and_figures(camus_dir, tmp_path):
    from sonoloop.cli import main

    out = tmp_path / "paper"
    assert main(["experiment", "paper", "--quick", "--lr", "1e-3", "--data", str(camus_dir), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["experiments"]) == ["experiment 1", "experiment 2", "experiment 3"]
    for entry in results["experiments"].values():
        assert [(r["batch_size"], r["epochs"]) for r in entry["runs"]] == [(2, 1), (4, 2)]
        for run in entry["runs"]:
            assert all(0 <= run["scores"][g]["multiclass"] <= 1 for g in ("E", "F", "G", "heldout"))
            meta = json.loads((out / "models" / run["model"] / "model.json").read_text())
            assert meta["training"]["retraining"]["annotated_frames"] == results["setup"]["G"]
    assert results["experiments"]["experiment 3"]["runs"][0]["scores"] != results["parent"]
    report = (out / "report.md").read_text()
    assert "Does the paper's conclusion hold here?" in report and "| experiment 2 (equal) | 4 | 2 |" in report
    for figure in ("parent.png", "experiment-1.png", "experiment-2.png", "experiment-3.png"):
        assert (out / figure).stat().st_size > 10_000
    assert main(["experiment", "paper", "--quick", "--data", str(camus_dir), "--out", str(out)]) == 2  # not empty

    # an interrupted run resumes: finished runs are kept, not trained again
    finished = out / "models" / "equal-b2-e1" / "model.json"
    before = finished.stat().st_mtime_ns
    (out / "results.json").unlink()
    assert main(["experiment", "paper", "--quick", "--resume", "--data", str(camus_dir), "--out", str(out)]) == 0
    assert finished.stat().st_mtime_ns == before
    assert json.loads((out / "results.json").read_text())["experiments"] == results["experiments"]

