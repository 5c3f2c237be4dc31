"""One Dice and one way to carry label values between class maps, for everything that scores
or compares label maps (evaluation, training, the promotion gate, AI-vs-expert agreement,
the engine benchmarks).

Convention: when neither mask has the structure there is nothing to score — ``dice`` gives
None, and means leave such pairs out (as nnU-Net does), instead of counting them as perfect.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty."""
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(truth))
    if total == 0:
        return None
    return 2.0 * int(np.count_nonzero(np.logical_and(prediction, truth))) / total


def mean(scores: Iterable[float | None]) -> float | None:
    """The mean of the scores that exist (None and NaN left out); None when none does."""
    kept = [float(s) for s in scores if s is not None and not np.isnan(s)]
    return float(np.mean(kept)) if kept else None


def dice_by_class(prediction: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    """Dice per named class (index 0 is the background) of two label maps in the same class map."""
    return {name: dice(prediction == value, truth == value) for value, name in enumerate(classes) if value > 0}


def remap(labels: np.ndarray, source: Sequence[str], target: Sequence[str]) -> np.ndarray:
    """Label values of class map ``source`` re-expressed in class map ``target``, by structure
    name (a model whose classes come in another order, an annotation document); a structure
    ``target`` does not know becomes background (0)."""
    if list(source) == list(target):
        return labels
    table = np.zeros(max(len(source), int(labels.max(initial=0)) + 1), dtype=np.uint8)
    for value, name in enumerate(source):
        if name in target:
            table[value] = list(target).index(name)
    return table[labels]
