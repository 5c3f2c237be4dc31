"""The Sequence of Ultrasound Regions read once: the crop and the calibration use one region."""

import pytest
from pydicom.dataset import Dataset

from sonoloop.dicom.regions import imaging_region, ultrasound_regions
from sonoloop.echo.measure import Calibration
from sonoloop.ml.preprocess import Box, region_box


def _region(x0, y0, x1, y1, fmt=1, units=3, delta=0.05):
    r = Dataset()
    r.RegionSpatialFormat = fmt
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX = r.PhysicalDeltaY = delta
    return r


def test_the_crop_and_the_calibration_come_from_the_same_region():
    """A small calibrated 2D inset (e.g. a zoom box) and the large image region with another
    pixel size: both the model's crop and the measurements use the large one."""
    inset = _region(500, 10, 600, 110, delta=0.01)
    image = _region(10, 20, 409, 419, delta=0.05)
    doppler = _region(0, 430, 639, 479, fmt=3)
    sequence = [inset, image, doppler]
    assert region_box(sequence, 480, 640) == Box(20, 10, 420, 410)
    calibration = Calibration.from_regions(sequence, 480, 640)
    assert (calibration.unit, calibration.dx) == ("cm", pytest.approx(0.05))


def test_an_imaging_region_without_centimetres_is_cropped_but_not_calibrated():
    sequence = [_region(10, 20, 409, 419, units=0), _region(500, 10, 520, 30, delta=0.01)]
    assert imaging_region(sequence).left == 10
    assert Calibration.from_regions(sequence).unit == "px"


def test_malformed_and_tiny_regions_are_left_out():
    broken = Dataset()
    broken.RegionSpatialFormat = 1  # no location at all
    tiny = _region(0, 0, 5, 5)
    assert len(ultrasound_regions([broken, tiny])) == 1
    assert imaging_region([broken, tiny]) is None
    # clipped to the frame: a region mostly off the image counts by what is left of it
    off = _region(635, 0, 900, 400)
    assert imaging_region([off], 480, 640) is None
    assert imaging_region([off]) == ultrasound_regions([off])[0]
