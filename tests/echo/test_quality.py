import numpy as np
import pytest

from sonoloop.echo.quality import ClassIndex, curve_noise, frame_problems, sector_mask
from sonoloop.ml.data import camus_frames
from sonoloop.ml.infer import keep_largest_components
from sonoloop.ml.preprocess import to_gray
from tests.echo.test_measure import heart

INDEX = ClassIndex(lv=1, myo=2, la=3)


def test_a_well_formed_heart_is_plausible():
    assert frame_problems(heart(80, 40), INDEX) == []


def test_a_hole_in_the_lv_cavity_is_implausible():
    labels = heart(80, 40)
    labels[140:155, 140:155] = 0  # 225 px of background inside the cavity (~2.5 % of it)
    assert frame_problems(labels, INDEX) == ["lv_holes"]


def test_pin_holes_like_those_of_jpeg_recovered_expert_labels_are_tolerated():
    labels = heart(80, 40)
    labels[150, 150] = 0
    assert frame_problems(labels, INDEX) == []


def test_an_lv_in_two_pieces_is_implausible():
    labels = heart(80, 40)
    labels[80:90, 100:200] = 2  # a band of wall across the cavity cuts it in two
    assert "lv_fragments" in frame_problems(labels, INDEX)


def test_a_myocardium_in_two_pieces_is_implausible():
    labels = heart(80, 40)
    labels[60:75][labels[60:75] == 2] = 0  # the apical wall gone: two side walls left
    assert frame_problems(labels, INDEX) == ["myo_fragments"]


def test_an_lv_without_its_myocardial_wall_is_implausible():
    labels = heart(80, 40)
    labels[labels == 2] = 0
    assert frame_problems(labels, INDEX) == ["myo_missing", "lv_exposed"]
    labels = heart(80, 40)
    labels[(labels == 2) & (np.arange(300)[None, :] < 150)] = 0  # the left half of the wall gone
    assert "lv_exposed" in frame_problems(labels, INDEX)


def test_an_atrium_away_from_the_mitral_plane_is_implausible():
    labels = heart(80, 40)
    la = labels == 3
    labels[la] = 0
    labels[np.roll(la, 40, axis=0)] = 3  # moved 40 px down, away from the LV
    assert frame_problems(labels, INDEX) == ["la_detached"]


def test_structures_outside_the_sector_are_implausible():
    labels = heart(80, 40)
    sector = np.zeros(labels.shape, bool)
    sector[:, :150] = True  # the right half of the heart lies outside the imaging sector
    assert frame_problems(labels, INDEX, sector) == ["outside_sector"]
    sector[:, :] = True
    assert frame_problems(labels, INDEX, sector) == []


def test_every_camus_expert_label_map_is_plausible(camus_dir):
    """The thresholds are honest: expert segmentations (without the specks left by their JPEG
    recovery) pass every criterion, against the sector found in their own image."""
    failures = {}
    for frame in camus_frames(camus_dir):
        image, labels = frame.load()
        problems = frame_problems(keep_largest_components(labels, 4), INDEX, sector_mask(to_gray(image)))
        if problems:
            failures[frame.frame_id] = problems
    assert failures == {}


def test_curve_noise_is_the_frame_to_frame_roughness_against_the_beat_amplitude():
    n = np.arange(120)
    smooth = 1000 + 300 * np.cos(2 * np.pi * n / 27)
    flicker = smooth + np.where(n % 7 == 3, 400, 0)
    assert curve_noise(smooth) < 0.03
    assert curve_noise(flicker) > 5 * curve_noise(smooth)
    assert curve_noise(np.full(10, 5.0)) == 0.0
    assert curve_noise(smooth) == pytest.approx(curve_noise(smooth * 2.5))  # independent of units


def test_the_shifted_plane_border_and_growth_are_scipys_4_neighbour_erosion_and_dilation():
    from scipy import ndimage

    from sonoloop.echo.quality import _border, _grow

    four = ndimage.generate_binary_structure(2, 1)
    rng = np.random.default_rng(5)
    masks = [rng.random((37, 53)) < p for p in (0.05, 0.5, 0.95)] + [np.ones((9, 7), bool), np.zeros((4, 4), bool)]
    masks += [ndimage.binary_opening(rng.random((60, 80)) < 0.6) for _ in range(3)]  # blobs touching the edges
    for mask in masks:
        assert np.array_equal(_border(mask), mask & ~ndimage.binary_erosion(mask, structure=four, border_value=0))
        assert np.array_equal(_grow(mask), ndimage.binary_dilation(mask, structure=four))
