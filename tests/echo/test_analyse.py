import numpy as np
import pytest
import torch

from sonoloop.echo.analyse import FRAME_BY_FRAME, PipelineSettings, loop_check, lv_cut_off, repair
from sonoloop.echo.measure import measure_loop
from sonoloop.echo.quality import curve_noise
from sonoloop.ml.infer import Segmenter, fill_holes, keep_largest_components
from tests.echo.test_measure import CLASSES, CM, area_length_ml, heart


class Postprocessing:
    """What ``repair`` needs of a segmenter: its post-processing."""

    def postprocess(self, labels):
        return fill_holes(keep_largest_components(labels, 4), [1, 3])


def beating(frames=60, period=20, ed_width=40, es_width=28, a=80):
    mid, swing = (ed_width + es_width) / 2, (ed_width - es_width) / 2
    return np.stack([heart(a, mid + swing * np.cos(2 * np.pi * n / period)) for n in range(frames)])


def flicker(loop: np.ndarray, frames: list[int]) -> np.ndarray:
    """The failures seen on real loops: the LV leaking into the atrium, a hole in the LV, the
    myocardium vanishing."""
    loop = loop.copy()
    for k, n in enumerate(frames):
        labels = loop[n]
        if k % 3 == 0:
            labels[labels == 3] = 1  # LV leaks into the atrium: the area jumps, no LA
        elif k % 3 == 1:
            labels[140:160, 140:160] = 0  # a hole in the cavity
        else:
            labels[labels == 2] = 0  # the wall vanishes
    return loop


def test_repair_rebuilds_flickering_frames_from_their_neighbours():
    clean = beating()
    noisy = flicker(clean, [7, 19, 33, 46])
    problems = loop_check(noisy, CLASSES, None)
    assert [n for n, p in enumerate(problems) if p] == [7, 19, 33, 46]
    assert "lv_jump" in problems[7] and "la_missing" in problems[7]
    assert problems[19] == ["lv_holes"] and "myo_missing" in problems[33]

    repaired, after, changed = repair(noisy, CLASSES, problems, None, Postprocessing())
    assert changed == [7, 19, 33, 46] and not any(after)
    for n in changed:  # each rebuilt frame is close to the true one
        dice = 2 * ((repaired[n] == 1) & (clean[n] == 1)).sum() / ((repaired[n] == 1).sum() + (clean[n] == 1).sum())
        assert dice > 0.97
    area = lambda loop: (loop == 1).sum(axis=(1, 2))  # noqa: E731
    assert curve_noise(area(repaired)) < 0.5 * curve_noise(area(noisy))
    np.testing.assert_array_equal(np.delete(repaired, changed, 0), np.delete(noisy, changed, 0))


def test_a_frame_without_plausible_neighbours_is_left_as_it_is():
    noisy = flicker(beating(frames=12), list(range(12)))
    problems = loop_check(noisy, CLASSES, None)
    repaired, after, changed = repair(noisy, CLASSES, problems, None, Postprocessing())
    assert changed == [] and after == problems
    np.testing.assert_array_equal(repaired, noisy)


def test_temporal_smoothing_averages_class_probabilities_over_neighbouring_frames():
    """A stand-in engine that flickers on one frame: frame 5's LV probability drops below the
    background's; with σ = 1 frame its neighbours carry it, frame by frame it is lost."""
    segmenter = Segmenter.__new__(Segmenter)
    segmenter.size, segmenter.chunk, segmenter.classes = 32, 1, CLASSES
    segmenter.largest_component, segmenter.filled = True, []
    calls = []

    def engine(batch):
        n = len(calls)
        calls.append(n)
        p = torch.zeros(1, 4, 32, 32)
        p[0, 0] = 0.6
        p[0, 1, 8:24, 8:24] = 0.3 if n == 5 else 0.9  # the flicker on frame 5
        return p

    segmenter.engine = engine
    frames = np.full((10, 32, 32), 200, np.uint8)
    alone = segmenter.predict(frames, temporal_sigma=0.0)
    assert (alone[5] == 1).sum() == 0 and (alone[4] == 1).sum() == 256
    calls.clear()
    smoothed = segmenter.predict(frames, temporal_sigma=1.0)
    assert [(smoothed[n] == 1).sum() for n in range(10)] == [256] * 10
    assert len(calls) == 10  # each frame through the network once


def test_temporal_smoothing_mixes_exactly_the_weighted_mean_of_the_neighbours():
    """The in-place mixing gives the same labels, bit for bit, as Σ wₖ·pₖ / Σ wₖ written out."""
    from sonoloop.ml.infer import restore_labels, temporal_weights
    from sonoloop.ml.preprocess import prepare

    segmenter = Segmenter.__new__(Segmenter)
    segmenter.size, segmenter.chunk, segmenter.classes = 32, 1, CLASSES
    segmenter.largest_component, segmenter.filled = False, []
    rng = torch.Generator().manual_seed(3)
    probabilities = [torch.rand(1, 4, 32, 32, generator=rng) for _ in range(9)]
    seen = []

    def engine(batch):  # frame by frame (chunk 1), in order
        seen.append(len(seen))
        return probabilities[seen[-1]]

    segmenter.engine = engine
    frames = np.full((9, 32, 32), 200, np.uint8)
    smoothed = segmenter.predict(frames, temporal_sigma=1.5)
    weights, geometry = temporal_weights(1.5), prepare(frames[0], 32, None, None)[1]
    radius = len(weights) // 2
    for i in range(9):
        lo, hi = max(0, i - radius), min(8, i + radius)
        w = weights[lo - i + radius: hi - i + radius + 1]
        mixed = sum(float(wk) * probabilities[k][0] for wk, k in zip(w, range(lo, hi + 1))) / float(w.sum())
        np.testing.assert_array_equal(smoothed[i], restore_labels(mixed, geometry))


def test_temporal_smoothing_covers_the_same_time_at_any_frame_rate():
    """σ is set in milliseconds: 1.5 frames at 30 frames/s, 3 frames at 60; a loop without
    timing is taken as 30 frames/s; frame by frame means no smoothing at all."""
    settings = PipelineSettings()
    assert settings.sigma_frames(1000 / 30) == pytest.approx(1.5)
    assert settings.sigma_frames(1000 / 60) == pytest.approx(3.0)
    assert settings.sigma_frames(None) == settings.sigma_frames(0) == pytest.approx(1.5)
    assert FRAME_BY_FRAME.sigma_frames(20.0) == 0.0
    assert settings.as_dict(20.0) == {"temporal_sigma_ms": 50.0, "temporal_sigma_frames": 2.5,
                                      "repair": True}


def test_a_dilated_low_ef_ventricle_is_measured_within_five_points():
    """A dilated LV (long semi-axis 95 px = 4.75 cm, short 52 px) whose walls barely move: its
    true EF (truncated ellipsoid of revolution) is 100·(1 − (46/52)²) ≈ 22 %."""
    loop = beating(frames=60, period=24, ed_width=52, es_width=46, a=95)
    problems = loop_check(loop, CLASSES, None)
    result = measure_loop(loop, CLASSES, CM, None, 33.3, problems)
    true_ef = 100 * (1 - (46 / 52) ** 2)
    assert 15 <= true_ef <= 25
    assert result.reliable, result.reliability  # a good loop must not be abstained on
    assert result.ef == pytest.approx(true_ef, abs=5) and result.ef_disks == pytest.approx(true_ef, abs=5)
    assert result.ef_spread["beats"] >= 2 and result.ef_spread["range"] < 2
    ed_area = result.areas["LV"][result.ed_frame]
    assert result.edv == pytest.approx(area_length_ml(ed_area, result.lv_length[result.ed_frame]), rel=0.01)


def test_a_good_loop_is_reliable_and_reports_the_median_beat():
    loop = beating(frames=70, period=20)
    result = measure_loop(loop, CLASSES, CM, None, 33.3, loop_check(loop, CLASSES, None))
    assert result.reliable and result.reliability_reasons == [] and result.implausible_frames == 0
    assert result.reliability.startswith("reliable: EF")
    assert result.ef == pytest.approx(np.median([b["ef"] for b in result.beats]))


def test_a_loop_of_implausible_frames_gets_no_ef():
    loop = beating(frames=60)
    for n in range(0, 60, 3):  # a third of the frames lose their wall
        loop[n][loop[n] == 2] = 0
    problems = loop_check(loop, CLASSES, None)
    result = measure_loop(loop, CLASSES, CM, None, 33.3, problems)
    assert result.implausible_frames >= 20
    assert not result.reliable and "implausible_frames" in result.reliability_reasons
    assert result.ef is None and result.beats  # the beats keep their numbers for inspection
    assert "too many frames with an implausible segmentation" in result.reliability


def test_beats_that_disagree_get_no_ef():
    first = [heart(80, 34 + 6 * np.cos(2 * np.pi * n / 20)) for n in range(40)]  # EF ≈ 51 %
    second = [heart(80, 37 + 3 * np.cos(2 * np.pi * n / 20)) for n in range(40)]  # EF ≈ 28 %
    loop = np.stack(first + second)
    result = measure_loop(loop, CLASSES, CM, None, 33.3, loop_check(loop, CLASSES, None))
    assert result.reliability_reasons == ["beats_disagree"] and result.ef is None
    assert result.ef_spread["range"] > 15


def test_a_loop_shorter_than_a_beat_gets_no_ef():
    loop = beating(frames=8, period=20)
    result = measure_loop(loop, CLASSES, CM, None, 33.3, loop_check(loop, CLASSES, None))
    assert result.ef is None and result.reliability_reasons == ["no_beat"]


def test_an_lv_cut_off_by_the_sector_edge_gets_no_ef():
    loop = beating(frames=60)
    sector = np.ones(loop.shape[1:], bool)
    sector[:95] = False  # the apex lies above the imaging sector
    for frame in loop:
        frame[~sector] = 0
    cut = lv_cut_off(loop, CLASSES, sector)
    assert min(cut) > 0.1
    result = measure_loop(loop, CLASSES, CM, None, 33.3, loop_check(loop, CLASSES, sector), cut)
    assert "lv_cut_off" in result.reliability_reasons and result.ef is None
    whole = np.ones(loop.shape[1:], bool)
    assert max(lv_cut_off(beating(frames=60), CLASSES, whole)) == 0.0


def test_measurements_and_the_cut_off_do_not_depend_on_where_the_heart_lies_in_the_frame():
    # both work in the box around what is drawn: the same heart in a larger frame, elsewhere
    from dataclasses import asdict

    loop = beating(frames=40)
    n, h, w = loop.shape
    sector = np.ones((h, w), bool)
    sector[:95] = False
    for frame in loop:
        frame[~sector] = 0
    big = np.zeros((n, h + 60, w + 90), np.uint8)
    big[:, 35: 35 + h, 50: 50 + w] = loop
    big_sector = np.zeros(big.shape[1:], bool)
    big_sector[35: 35 + h, 50: 50 + w] = sector
    cut = lv_cut_off(loop, CLASSES, sector)
    assert min(cut) > 0.1 and cut == lv_cut_off(big, CLASSES, big_sector)
    problems = loop_check(loop, CLASSES, sector)
    small_result = asdict(measure_loop(loop, CLASSES, CM, None, 33.3, problems, cut))
    big_result = asdict(measure_loop(big, CLASSES, CM, None, 33.3, problems, cut))
    assert small_result == big_result and small_result["lv_length"][0] > 0
    assert lv_cut_off(np.zeros_like(loop), CLASSES, sector) == [0.0] * n  # no LV drawn anywhere


def test_the_workers_rehearsal_builds_a_seg_and_an_sr():
    # a worker runs this when it starts, so that its first job does not read highdicom's tables
    from sonoloop.echo.analyse import rehearse_outputs

    rehearsal = rehearse_outputs(CLASSES)
    assert rehearsal.segmentation.SOPClassUID.name == "Segmentation Storage"
    assert len(rehearsal.segmentation.SegmentSequence) == 3
    assert rehearsal.report is not None and rehearsal.report.SOPClassUID.name == "Comprehensive 3D SR Storage"
    assert not any("not written" in flag for flag in rehearsal.measurements["flags"])
