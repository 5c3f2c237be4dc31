import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset

from sonoloop.ml.infer import restore_labels
from sonoloop.ml.preprocess import Box, FrameError, geometry_for, letterbox_labels, prepare, region_box, to_gray


def test_colour_and_16_bit_frames_become_unit_grayscale():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    assert to_gray(rgb).max() == pytest.approx(0.299)
    sixteen = np.full((4, 4), 4095, np.uint16)
    assert to_gray(sixteen, bits_stored=12).max() == pytest.approx(1.0)


def test_empty_frame_is_refused_with_a_reason():
    with pytest.raises(FrameError, match="empty"):
        prepare(np.zeros((50, 60), np.uint8), 64)
    with pytest.raises(FrameError, match="H×W"):
        prepare(np.zeros((2, 3, 4, 5), np.uint8), 64)


def test_sector_crop_and_letterbox_keep_the_aspect_ratio():
    frame = np.zeros((300, 400), np.uint8)
    frame[50:250, 100:300] = 200  # a 200 × 200 sector in a wider frame
    x, g = prepare(frame, 64)
    assert x.shape == (64, 64) and g.box == Box(50, 100, 250, 300)
    assert (g.scaled_height, g.scaled_width) == (64, 64)


@pytest.mark.parametrize("shape, box", [((480, 640), Box(40, 80, 440, 560)), ((301, 203), Box(0, 0, 301, 203))])
def test_labels_map_back_to_the_original_geometry_exactly(shape, box):
    labels = np.zeros(shape, np.uint8)
    labels[box.top + 30: box.top + 90, box.left + 20: box.left + 70] = 1
    labels[box.top + 100: box.top + 160, box.left + 40: box.left + 120] = 3
    g = geometry_for(shape[0], shape[1], box, 384)
    small = letterbox_labels(labels, g)
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(small).long(), 4).permute(2, 0, 1).float()
    back = restore_labels(one_hot, g)
    assert back.shape == shape
    for c in (1, 3):
        agreement = 2 * np.logical_and(back == c, labels == c).sum() / ((back == c).sum() + (labels == c).sum())
        assert agreement > 0.97
    assert not back[: box.top].any() and not back[:, : box.left].any()


def test_ultrasound_region_from_dicom_is_preferred():
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 10, 20
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 209, 219
    text = Dataset()
    text.RegionSpatialFormat = 0
    assert region_box([text, region], 480, 640) == Box(20, 10, 220, 210)
    assert region_box([text], 480, 640) is None
