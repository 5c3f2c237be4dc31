"""One Dice, and class maps carried by name: a model whose classes come in another order is
scored, compared and shown exactly like the same model in the usual order."""

import numpy as np
import pytest
import torch

from sonoloop.ml.evaluate import mean_dice
from sonoloop.ml.infer import Segmenter
from sonoloop.ml.metrics import dice, dice_by_class, mean, remap
from sonoloop.ml.modelfolder import save_model
from sonoloop.ml.network import build_network
from sonoloop.ml.spec import CLASSES, TINY_ARCHITECTURE, TINY_PREPROCESSING

REORDERED = ["background", "LA", "LV", "MYO"]


def test_remap_carries_values_by_structure_name():
    labels = np.array([[0, 1, 2, 3]], np.uint8)  # background, LV, MYO, LA in CLASSES
    assert remap(labels, CLASSES, REORDERED).tolist() == [[0, 2, 3, 1]]
    assert remap(remap(labels, CLASSES, REORDERED), REORDERED, CLASSES).tolist() == labels.tolist()
    assert remap(labels, CLASSES, ["background", "LV"]).tolist() == [[0, 1, 0, 0]]  # unknown → background
    assert remap(labels, CLASSES, CLASSES) is labels


def test_one_dice_convention_nothing_to_score_is_none_and_left_out_of_means():
    a, b = np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool)
    assert dice(a, b) == pytest.approx(2 / 3) and dice(a & False, b & False) is None
    assert mean([1.0, None, 0.5, float("nan")]) == 0.75 and mean([None]) is None
    scores = dice_by_class(np.array([0, 1, 1]), np.array([0, 1, 3]), CLASSES)
    assert scores == {"LV": pytest.approx(2 / 3), "MYO": None, "LA": 0.0}


class Frame:
    def __init__(self, image, truth):
        self.image, self.truth = image, truth

    def load(self):
        return self.image, self.truth


def test_a_model_with_reordered_classes_scores_the_same(tmp_path):
    torch.manual_seed(3)
    network = build_network(TINY_ARCHITECTURE)
    description = {"name": "usual", "architecture": TINY_ARCHITECTURE, "classes": CLASSES,
                   "preprocessing": TINY_PREPROCESSING}
    usual = Segmenter(save_model(tmp_path / "usual", network, description), engine="fp32")
    # the same network with its output channels in REORDERED's order
    state = network.state_dict()
    order = [CLASSES.index(name) for name in REORDERED]
    for key in ("output_block.conv.conv.weight", "output_block.conv.conv.bias"):
        state[key] = state[key][order].clone()
    twin = build_network(TINY_ARCHITECTURE)
    twin.load_state_dict(state)
    reordered = Segmenter(save_model(tmp_path / "twin", twin, {**description, "name": "twin", "classes": REORDERED}),
                          engine="fp32")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        image = (rng.random((80, 96)) * 255).astype(np.uint8)
        truth = usual.predict(image[None])[0]  # a reference the usual model matches exactly
        truth[:10] = 3
        frames.append(Frame(image, truth))
    raw = reordered.predict(frames[0].image[None])[0]
    assert (raw != usual.predict(frames[0].image[None])[0]).any()  # its values do differ
    assert mean_dice(reordered, frames) == mean_dice(usual, frames)
