import numpy as np
import pytest
from pydicom import dcmread

from sonoloop.dicom.samples import ECHO_CINE_JPEG, sample_path
from sonoloop.echo.measure import (Calibration, biplane_volumes, cardiac_phases, frame_times, long_axis,
                                   measure_loop, r_wave_frames)

CLASSES = ["background", "LV", "MYO", "LA"]
CM = Calibration(0.05, 0.05, "cm")  # 0.5 mm pixels


def heart(a: float, b: float, shape=(400, 300), centre=(150, 150)) -> np.ndarray:
    """An LV cavity shaped as an ellipse (long semi-axis a vertical, apex up) cut flat at the
    mitral annulus 0.8·a below its centre, a myocardial rim around it, the LA below the annulus."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = centre
    annulus = cy + round(0.8 * a)
    labels = np.zeros(shape, np.uint8)
    labels[(((yy - cy) / (a + 8)) ** 2 + ((xx - cx) / (b + 8)) ** 2 <= 1) & (yy <= annulus)] = 2
    labels[(((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1) & (yy <= annulus)] = 1
    la = ((yy - (annulus + 33)) / 35) ** 2 + ((xx - cx) / 25) ** 2 <= 1  # 67 px tall below the annulus
    labels[la & (labels == 0)] = 3
    return labels


def cavity_ml(a_px, b_px, c_px=None, pixel_cm=0.05):
    """Volume of the truncated ellipsoid of revolution the method of disks measures."""
    c_px = b_px if c_px is None else c_px
    h = round(0.8 * a_px)
    return np.pi * b_px * c_px * (h - h ** 3 / (3 * a_px ** 2) + 2 * a_px / 3) * pixel_cm ** 3


def area_length_ml(area_cm2, length_cm):
    return 8 * area_cm2 ** 2 / (3 * np.pi * length_cm)


def test_long_axis_runs_from_the_mitral_annulus_to_the_apex():
    labels = heart(80, 40)
    axis = long_axis(labels == 1, labels == 3, CM)
    assert axis.length == pytest.approx((80 + 64) * 0.05, abs=0.06)
    assert axis.apex[0] == pytest.approx((150 - 80) * 0.05, abs=0.06)  # the top of the ellipse
    assert axis.base == pytest.approx(((150 + 64) * 0.05, 150 * 0.05), abs=0.06)  # the annulus midpoint
    no_atrium = long_axis(labels == 1, None, CM)  # from the shape alone
    assert no_atrium.length == pytest.approx(axis.length, rel=0.03)


def test_a_beating_ellipsoid_gives_its_known_volumes_and_ejection_fraction():
    widths = [34 + 6 * np.cos(2 * np.pi * n / 20) for n in range(40)]  # ED at 0 and 20 (b=40), ES at 10, 30 (b=28)
    loop = np.stack([heart(80, b) for b in widths])
    result = measure_loop(loop, CLASSES, CM)
    assert [(b["ed"], b["es"]) for b in result.beats] == [(0, 10), (20, 30)]
    assert result.units == {"length": "cm", "area": "cm2", "volume": "mL"} and result.calibrated
    ed_area = result.areas["LV"][0]
    assert ed_area == pytest.approx(float((loop[0] == 1).sum()) * 0.0025)
    assert result.edv == pytest.approx(area_length_ml(ed_area, (80 + 64) * 0.05), rel=0.01)
    assert result.edv_disks == pytest.approx(cavity_ml(80, 40), rel=0.03)  # 60 mL
    assert result.esv_disks == pytest.approx(cavity_ml(80, 28), rel=0.04)
    assert result.ef == pytest.approx(100 * (1 - (28 / 40) ** 2), abs=1.5)  # 51 %
    assert result.ef_disks == pytest.approx(100 * (1 - (28 / 40) ** 2), abs=2.5)
    la_area = float((loop[10] == 3).sum()) * 0.0025  # at end-systole
    assert result.la_volume == pytest.approx(area_length_ml(la_area, 67 * 0.05), rel=0.05)
    assert result.flags == []


def test_end_diastole_once_per_cycle_despite_beat_to_beat_variation():
    # like the 120-frame pydicom-data cine: 27-frame cycles, the loop starting in systole,
    # every other beat larger (breathing), and a second diastolic hump (early filling)
    n = np.arange(120)
    phase = 2 * np.pi * (n - 22) / 27
    area = 25 + 6 * np.cos(phase) + 1.5 * np.cos(2 * phase + 1) + 2 * np.cos(phase / 2)
    beats = cardiac_phases(area, frame_time_ms=33.3)
    assert len(beats) == 4  # not the loop's first frame, not the early-filling humps
    for beat, cycle_start in zip(beats, (22, 49, 76, 103)):
        assert abs(beat.ed - cycle_start) <= 2 and area[beat.ed] == area[beat.ed - 10: beat.ed + 11].max()
        assert 5 <= beat.es - beat.ed <= 20 and area[beat.es] == area[beat.ed: beat.ed + 27].min()


def test_r_waves_set_end_diastole():
    area = 100 + 30 * np.cos(2 * np.pi * np.arange(40) / 20)
    assert [b.ed for b in cardiac_phases(area)] == [0, 20]
    assert [(b.ed, b.es) for b in cardiac_phases(area, r_wave_frames=[2, 22])] == [(2, 10), (22, 30)]
    assert r_wave_frames([66.0, 733.0], [n * 33.3 for n in range(40)]) == [2, 22]
    header = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    times = frame_times(header)
    assert len(times) == 120 and times[1] == pytest.approx(33.333)


def test_without_calibration_values_are_in_pixels_and_say_so():
    loop = np.stack([heart(80, 34 + 6 * np.cos(2 * np.pi * n / 20)) for n in range(21)])
    result = measure_loop(loop, CLASSES, Calibration())
    assert result.units["volume"] == "px3" and not result.calibrated
    assert result.edv_disks == pytest.approx(cavity_ml(80, 40, pixel_cm=1.0), rel=0.03)
    assert any("no physical calibration" in f for f in result.flags)


def test_implausible_and_missing_results_are_flagged_not_hidden():
    barely = np.stack([heart(80, 39.6 + 0.4 * np.cos(2 * np.pi * n / 20)) for n in range(21)])
    result = measure_loop(barely, CLASSES, CM)
    assert all(b["ef"] < 5 for b in result.beats)  # the beats keep their values
    assert any("outside the plausible 5–90 %" in f for f in result.flags)
    assert not result.reliable and result.reliability_reasons == ["ef_implausible"] and result.ef is None
    assert "outside the physiological range" in result.reliability
    empty = np.zeros((10, 50, 50), np.uint8)
    result = measure_loop(empty, CLASSES, CM)
    assert "LV not found in any frame" in result.flags and result.ef is None
    assert any("no cardiac cycle" in f for f in result.flags)
    single = measure_loop(heart(80, 40)[None], CLASSES, CM)
    assert single.areas["LV"][0] > 0 and single.ef is None
    assert any("single frame" in f for f in single.flags)


def test_biplane_method_of_disks_on_two_orthogonal_ellipses():
    four = (heart(80, 40), heart(80, 28))
    two = (heart(80, 36), heart(80, 25))
    volumes = biplane_volumes(four, two, CLASSES, CM, CM)
    assert volumes["edv"] == pytest.approx(cavity_ml(80, 40, 36), rel=0.04)
    assert volumes["esv"] == pytest.approx(cavity_ml(80, 28, 25), rel=0.04)
    assert volumes["ef"] == pytest.approx(100 * (1 - 28 * 25 / (40 * 36)), abs=2.5)
    assert volumes["flags"] == []
    with pytest.raises(ValueError, match="one view is calibrated"):
        biplane_volumes(four, two, CLASSES, CM, Calibration())


def test_calibration_from_the_ultrasound_regions_of_a_real_cine():
    header = dcmread(sample_path(ECHO_CINE_JPEG), stop_before_pixels=True)
    calibration = Calibration.from_regions(header.SequenceOfUltrasoundRegions)
    assert calibration.unit == "cm" and calibration.dx == pytest.approx(0.05105, abs=1e-5)
    assert Calibration.from_regions([]).unit == "px"
