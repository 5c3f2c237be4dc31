import numpy as np
import pytest
import torch

from sonoloop.ml.augment import RandLowResolutiond, RandSectord, RandSpeckled
from sonoloop.ml.data import ultrasound_augmentation
from sonoloop.ml.train import TrainConfig


def asymmetric_item(size=256):
    """An 'LV' (label 1, bright) well to the left, so a flip shows through any jitter."""
    image = torch.zeros(1, size, size)
    label = torch.zeros(1, size, size, dtype=torch.int64)
    rows, cols = slice(size * 3 // 8, size * 5 // 8), slice(size // 10, size * 3 // 10)
    image[0, rows, cols], label[0, rows, cols] = 0.8, 1
    return {"image": image, "label": label}


def left_fraction(label: torch.Tensor) -> float:
    mask = np.asarray(label[0]) == 1
    half = mask.shape[1] // 2
    return mask[:, :half].sum() / max(mask.sum(), 1)


def test_acquisition_augmentation_flips_left_right_with_image_and_labels_together():
    augment = ultrasound_augmentation("acquisition")
    augment.set_random_state(0)
    flipped = kept = 0
    for _ in range(40):
        item = augment(asymmetric_item())
        fraction = left_fraction(item["label"])
        if fraction < 0.2:
            flipped += 1
        elif fraction > 0.8:
            kept += 1
        image, label = np.asarray(item["image"][0]), np.asarray(item["label"][0])
        assert 0.0 <= image.min() and image.max() <= 1.0
        if (label == 1).sum() > 20:  # the bright region moved with its label
            assert image[label == 1].mean() > 2 * image[label == 0].mean()
    assert flipped >= 10 and kept >= 10  # about half each


def test_basic_augmentation_never_flips():
    augment = ultrasound_augmentation("basic")
    augment.set_random_state(0)
    assert all(left_fraction(augment(asymmetric_item())["label"]) > 0.8 for _ in range(30))


def test_low_resolution_coarsens_the_image_and_keeps_the_labels():
    rng = np.random.default_rng(0)
    item = {"image": torch.from_numpy(rng.random((1, 384, 384), dtype=np.float32)),
            "label": torch.from_numpy(rng.integers(0, 4, (1, 384, 384)))}
    transform = RandLowResolutiond(keys="image", prob=1.0, sizes=(112, 112))
    out = transform(item)
    assert out["image"].shape == (1, 384, 384)
    assert torch.equal(out["label"], item["label"])
    # the speckle of single pixels is gone: neighbouring pixels now nearly agree
    roughness = lambda x: float(torch.abs(torch.diff(x[0], dim=1)).mean())  # noqa: E731
    assert roughness(out["image"]) < 0.3 * roughness(item["image"])


def test_a_narrower_sector_blanks_image_and_labels_outside_it():
    item = {"image": torch.ones(1, 128, 128), "label": torch.ones(1, 128, 128, dtype=torch.int64)}
    transform = RandSectord(keys=("image", "label"), prob=1.0, half_angle=(30.0, 30.0), apex_shift=0.0,
                            depth=(1.0, 1.0))
    transform.set_random_state(1)
    out = transform(item)
    image, label = np.asarray(out["image"][0]), np.asarray(out["label"][0])
    np.testing.assert_array_equal(image > 0, label > 0)  # one fan for both
    assert image[5, 64] == 1 and image[5, 5] == 0 and image[120, 64] == 1 and image[64, 2] == 0
    assert 0.25 < image.mean() < 0.6


def test_speckle_is_multiplicative_and_leaves_black_black():
    image = torch.zeros(1, 64, 64)
    image[0, :, 32:] = 0.5
    transform = RandSpeckled(keys="image", prob=1.0, sigma=(0.3, 0.3))
    transform.set_random_state(2)
    out = transform({"image": image})["image"][0]
    assert torch.all(out[:, :32] == 0) and out[:, 32:].std() > 0.05


def test_the_augmentation_is_part_of_the_training_configuration():
    assert TrainConfig().augmentation == "basic"
    basic = TrainConfig(epochs=50, batch_size=4, learning_rate=1e-3, bf16=True)
    assert basic.fingerprint() == "24708a1f72440c03"  # unchanged: older checkpoints still resume
    assert TrainConfig(augmentation="acquisition").fingerprint() != TrainConfig().fingerprint()
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainConfig(augmentation="everything")
