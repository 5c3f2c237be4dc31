"""The paper's three retraining experiments, made measurable on real CAMUS frames.

The paper fine-tunes its U-Net on 25 expert annotations of one case "G" — alone (experiment
1), with an equal number of original training images (2), or with twice as many (3) — for
four (batch size, epochs) configurations, and shows the predictions on G and on two cases
"E" and "F" never trained on. Its hospital annotated in its own style; here that style is a
documented, deterministic change of the CAMUS expert masks (:func:`hospital_style`), so
adaptation is measured against real references in the new style (G, E, F), and forgetting
against the original labels of the locked held-out set (the CAMUS validation patients).

Groups (seeded, by patient; CAMUS frames here mostly have one labelled frame per patient,
so the "case" G is 25 frames of 25 training patients): G, E, F and the original images come
from the CAMUS training split, never from the held-out patients. Caveat, reported: the
shipped parent was trained on the training split with the original labels, so it has seen
the G/E/F images in the original style; every experiment starts from that same parent, so
the comparison between mixing strategies stays fair.

Every run keeps its last epoch (the epochs are the experimental variable; the held-out set
is only reported each epoch, never used to choose).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import LabelledFrame, camus_frames, select
from .evaluate import png_grid, predict_frame
from .metrics import dice, mean
from .infer import Segmenter
from .retrain import STRATEGIES, retrain
from .spec import TINY_ARCHITECTURE, TINY_PREPROCESSING
from .train import TrainConfig, export_best, train

STYLE = ("the hospital's style: LV grown by 3 px into the myocardium (endocardial border drawn further "
         "out), the myocardium's outer border pulled in by 2 px (narrower wall), the LA trimmed by 4 px "
         "on its left and right (narrower, less round)")
CONFIGS_FULL = [(2, 5), (2, 10), (4, 5), (4, 10)]  # (batch size, epochs)
CONFIGS_QUICK = [(2, 1), (4, 2)]
EXPERIMENTS = {"experiment 1": "annotations-only", "experiment 2": "equal", "experiment 3": "two-to-one"}
LV, MYO, LA = 1, 2, 3


def hospital_style(labels: np.ndarray) -> np.ndarray:
    """The CAMUS expert masks redrawn in the modelled hospital style (see STYLE). Deterministic."""
    out = labels.copy()
    lv_grown = ndimage.binary_dilation(labels == LV, iterations=3)
    out[lv_grown & (labels == MYO)] = LV
    heart = (out == LV) | (out == MYO)
    wall_kept = ndimage.binary_erosion(heart, iterations=2)
    out[(out == MYO) & ~wall_kept] = 0
    la = labels == LA
    narrower = ndimage.binary_erosion(la, structure=np.ones((1, 9), bool))
    out[la & ~narrower] = 0
    return out


@dataclass(frozen=True)
class StyledFrame:
    """A CAMUS frame whose labels are shown in the hospital's style."""

    frame: LabelledFrame

    @property
    def frame_id(self) -> str:
        return self.frame.frame_id

    @property
    def patient(self) -> str:
        return self.frame.patient

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.frame.load()
        return image, hospital_style(labels)


def groups(frames: list[LabelledFrame], g: int, e: int, f: int, seed: int = 0) -> dict[str, list]:
    """G, E, F (one frame per patient, distinct patients) and the originals (the other training patients)."""
    training = select(frames, "training")
    by_patient: dict[str, list[LabelledFrame]] = {}
    for frame in sorted(training, key=lambda x: x.frame_id):
        by_patient.setdefault(frame.patient, []).append(frame)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    chosen = patients[: g + e + f]
    first = [by_patient[p][0] for p in chosen]
    used = set(chosen)
    return {"G": first[:g], "E": first[g:g + e], "F": first[g + e:], "originals":
            [x for x in training if x.patient not in used], "heldout": select(frames, "validation")}


def multiclass(scores: dict[str, float]) -> float:
    """The paper's multiclass Dice: the mean over LV, myocardium and LA."""
    return round((scores["LV"] + scores["MYO"] + scores["LA"]) / 3, 4)


def score(segmenter: Segmenter, frames: list) -> tuple[dict, list]:
    """Mean Dice per structure and multiclass over ``frames``; and per-frame (id, image, truth, prediction)."""
    per_class, examples = {"LV": [], "MYO": [], "LA": []}, []
    for frame in frames:
        image, truth = frame.load()
        prediction = predict_frame(segmenter, frame, image)
        for name, value in (("LV", LV), ("MYO", MYO), ("LA", LA)):
            per_class[name].append(dice(prediction == value, truth == value))
        examples.append((frame.frame_id, image, truth, prediction))
    scores = {k: round(mean(v) or 0.0, 4) for k, v in per_class.items()}
    scores["multiclass"] = multiclass(scores)
    return scores, examples


def _quick_parent(frames: dict, folder: Path) -> Path:
    config = TrainConfig(architecture={**TINY_ARCHITECTURE, "filters": [8, 16, 32]},
                         preprocessing=dict(TINY_PREPROCESSING), epochs=10, batch_size=8, learning_rate=3e-3,
                         augment=False, keep="last")
    training, validation = frames["originals"][:160], frames["heldout"][:4]
    history = train(training, validation, config, folder.with_name("parent.work"), progress=False)
    return export_best(folder.with_name("parent.work"), folder, config, history, training, validation,
                       name="quick-parent", data_source="CAMUS (quick)")


def run_paper(data: Path, out: Path, *, parent: Path | None, quick: bool = False, engine: str = "fp32",
              learning_rate: float = 1e-4, bf16: bool = False, log=print) -> dict:
    """Run the three experiments × configurations; write results.json, report.md and figures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = camus_frames(Path(data))
    sizes = (6, 3, 3) if quick else (25, 8, 8)
    sets = groups(frames, *sizes)
    if quick:
        sets["heldout"] = sets["heldout"][:8]
        parent = out / "models" / "parent"
        if not (parent / "model.json").exists():
            _quick_parent(sets, parent)
    configs = CONFIGS_QUICK if quick else CONFIGS_FULL
    styled = {k: [StyledFrame(x) for x in sets[k]] for k in ("G", "E", "F")}

    def evaluate(folder: Path) -> tuple[dict, dict]:
        segmenter = Segmenter(folder, engine=engine)
        scores, examples = {}, {}
        for name in ("E", "F", "G"):
            scores[name], examples[name] = score(segmenter, styled[name])
        scores["heldout"], _ = score(segmenter, sets["heldout"])
        return scores, examples

    log(f"parent {parent}: scoring")
    baseline, baseline_examples = evaluate(parent)
    results = {"setup": {"style": STYLE, "G": [x.frame_id for x in sets["G"]], "E": [x.frame_id for x in sets["E"]],
                         "F": [x.frame_id for x in sets["F"]], "heldout_frames": len(sets["heldout"]),
                         "originals_available": len(sets["originals"]), "configs": configs, "quick": quick,
                         "learning_rate": learning_rate, "bf16": bf16, "parent": str(parent), "engine": engine},
               "parent": baseline, "experiments": {}}
    for experiment, strategy in EXPERIMENTS.items():
        runs, figure = [], []
        for batch_size, epochs in configs:
            name = f"{strategy}-b{batch_size}-e{epochs}"
            log(f"{experiment} ({strategy}), batch size {batch_size}, {epochs} epochs")
            config = TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, augment=False,
                                 keep="last", bf16=bf16)
            folder = out / "models" / name
            if not (folder / "model.json").exists():  # a finished run of an interrupted experiment is kept
                retrain(parent, styled["G"], sets["originals"], sets["heldout"], strategy=strategy, ratio=None,
                        config=config, work_dir=out / "work" / name, out=folder, name=name, annotation_versions=[],
                        data_source="paper experiment: G in the hospital style + CAMUS")
            scores, examples = evaluate(folder)
            runs.append({"batch_size": batch_size, "epochs": epochs, "model": name, "scores": scores})
            results["experiments"][experiment] = {"strategy": strategy,
                                                  "originals_per_annotation": STRATEGIES[strategy], "runs": runs}
            (out / "results.partial.json").write_text(json.dumps(results, indent=2) + "\n")
            for group in ("E", "F", "G"):
                frame_id, image, truth, prediction = examples[group][0]
                figure.append((f"{group} b{batch_size} e{epochs}: {scores[group]['multiclass']:.2f}", image, truth,
                               prediction))
        png_grid(figure, out / f"{experiment.replace(' ', '-')}.png", columns=3)
        results["experiments"][experiment] = {"strategy": strategy, "originals_per_annotation": STRATEGIES[strategy],
                                              "runs": runs}
    png_grid([(f"{g} parent: {baseline[g]['multiclass']:.2f}", *baseline_examples[g][0][1:]) for g in ("E", "F", "G")],
             out / "parent.png", columns=3)
    results["summary"] = summarise(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.partial.json").unlink(missing_ok=True)
    (out / "report.md").write_text(report(results))
    return results


def summarise(results: dict) -> dict:
    """Per strategy, averaged over the configurations: adaptation on unseen E/F, fit on G, the G–E/F
    gap (overfitting), held-out Dice and its change from the parent (forgetting)."""
    parent_heldout = results["parent"]["heldout"]["multiclass"]
    summary = {}
    for experiment, entry in results["experiments"].items():
        runs = entry["runs"]
        unseen = np.mean([(r["scores"]["E"]["multiclass"] + r["scores"]["F"]["multiclass"]) / 2 for r in runs])
        fit = np.mean([r["scores"]["G"]["multiclass"] for r in runs])
        heldout = np.mean([r["scores"]["heldout"]["multiclass"] for r in runs])
        summary[experiment] = {"strategy": entry["strategy"], "unseen_EF": round(float(unseen), 4),
                               "G": round(float(fit), 4), "gap_G_minus_EF": round(float(fit - unseen), 4),
                               "heldout": round(float(heldout), 4),
                               "heldout_change": round(float(heldout - parent_heldout), 4)}
    return summary


def conclusions(results: dict) -> list[str]:
    s = results["summary"]
    one, two, three = (s[k] for k in ("experiment 1", "experiment 2", "experiment 3"))
    parent = results["parent"]
    lines = [
        f"Parent on E/F in the hospital style: {(parent['E']['multiclass'] + parent['F']['multiclass']) / 2:.3f}; "
        f"on the held-out set (original labels): {parent['heldout']['multiclass']:.3f}.",
        f"Adaptation (mean multiclass Dice on unseen E/F, new style): annotations only {one['unseen_EF']:.3f}, "
        f"1:1 {two['unseen_EF']:.3f}, 2:1 {three['unseen_EF']:.3f}.",
        f"Overfitting (G minus E/F): {one['gap_G_minus_EF']:+.3f}, {two['gap_G_minus_EF']:+.3f}, "
        f"{three['gap_G_minus_EF']:+.3f}.",
        f"Forgetting (held-out change from the parent): {one['heldout_change']:+.3f}, {two['heldout_change']:+.3f}, "
        f"{three['heldout_change']:+.3f}.",
    ]
    less_overfit = two["gap_G_minus_EF"] < one["gap_G_minus_EF"] and three["gap_G_minus_EF"] < one["gap_G_minus_EF"]
    less_forgetting = two["heldout_change"] > one["heldout_change"] and three["heldout_change"] > one["heldout_change"]
    best = max(s.values(), key=lambda e: e["unseen_EF"])
    lines.append(f"Adding original images {'reduced' if less_overfit else 'did not reduce'} the G–E/F gap in both "
                 f"mixed experiments, and {'reduced' if less_forgetting else 'did not reduce'} forgetting in both.")
    lines.append(f"Best adaptation to unseen cases: {best['strategy']} ({best['unseen_EF']:.3f}).")
    return lines


def report(results: dict) -> str:
    setup = results["setup"]
    lines = ["# The paper's retraining experiments on CAMUS", ""]
    if setup["quick"]:
        lines += ["Quick plumbing run (a small network, a few steps): the numbers mean nothing.", ""]
    lines += [f"Style change modelled: {setup['style']}.", "",
              f"G: {len(setup['G'])} annotated frames (one per patient); E: {len(setup['E'])}, F: {len(setup['F'])} "
              f"frames, never trained on; held-out: {setup['heldout_frames']} CAMUS validation frames with their "
              f"original labels. Originals drawn from {setup['originals_available']} training frames of other "
              f"patients. Fine-tuning lr {setup['learning_rate']}{', bf16' if setup.get('bf16') else ''}, last epoch "
              f"kept, parent `{Path(setup['parent']).name}`.", "",
              "Multiclass Dice (mean of LV, MYO, LA); E, F, G against the hospital style, held-out against the "
              "original labels.", "",
              "| experiment | batch | epochs | E | F | G | held-out |", "| --- | --- | --- | --- | --- | --- | --- |"]
    p = results["parent"]
    lines.append(f"| parent | – | – | {p['E']['multiclass']:.3f} | {p['F']['multiclass']:.3f} | "
                 f"{p['G']['multiclass']:.3f} | {p['heldout']['multiclass']:.3f} |")
    for experiment, entry in results["experiments"].items():
        for run in entry["runs"]:
            sc = run["scores"]
            lines.append(f"| {experiment} ({entry['strategy']}) | {run['batch_size']} | {run['epochs']} | "
                         f"{sc['E']['multiclass']:.3f} | {sc['F']['multiclass']:.3f} | {sc['G']['multiclass']:.3f} | "
                         f"{sc['heldout']['multiclass']:.3f} |")
    lines += ["", "## Does the paper's conclusion hold here?", ""]
    lines += [f"- {line}" for line in conclusions(results)]
    lines += ["", "Figures: `parent.png`, `experiment-1.png` … `experiment-3.png` (rows: configurations; columns: "
              "E, F, G; the reference filled faintly, the prediction outlined, multiclass Dice in the caption).", ""]
    return "\n".join(lines)
