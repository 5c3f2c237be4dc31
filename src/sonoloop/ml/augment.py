"""Augmentations for what differs between ultrasound machines, on the prepared network input
(1, H, W) in [0, 1]: image resolution, sector width and position, speckle. MONAI dictionary
transforms, seeded through MONAI's ``set_random_state`` like the built-in ones."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform


class _RandDictTransform(RandomizableTransform, MapTransform):
    """Draw the parameters once per item (``randomize``), then ``apply`` them to each key."""

    def __init__(self, keys, prob: float):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self.apply(torch.as_tensor(d[key]))
        return d

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RandLowResolutiond(_RandDictTransform):
    """Down-sample the image to ``sizes`` pixels on its long side (anti-aliased) and back
    (bilinear): an echo recorded or stored at 112×112 looks like this after preprocessing.
    Labels keep full resolution, so the network learns the fine boundary from a coarse image."""

    def __init__(self, keys, prob: float = 0.3, sizes: tuple[int, int] = (80, 256)):
        super().__init__(keys, prob)
        self.sizes = sizes
        self._size = sizes[1]

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._size = int(self.R.randint(self.sizes[0], self.sizes[1] + 1))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        factor = self._size / max(h, w)
        if factor >= 1:
            return image
        small = F.interpolate(image[None].float(), scale_factor=factor, mode="bilinear", antialias=True,
                              align_corners=False)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0].to(image.dtype)


class RandSectord(_RandDictTransform):
    """A narrower imaging sector: everything outside a fan of random half-angle, apex position
    and depth is black in the image and background in the labels (a structure cut off by the
    sector edge is not drawn there, as at inference)."""

    def __init__(self, keys, prob: float = 0.3, half_angle: tuple[float, float] = (28.0, 45.0),
                 apex_shift: float = 0.12, depth: tuple[float, float] = (0.8, 1.1)):
        super().__init__(keys, prob)
        self.half_angle, self.apex_shift, self.depth = half_angle, apex_shift, depth
        self._params = (36.0, 0.0, 1.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._params = (float(self.R.uniform(*self.half_angle)),
                        float(self.R.uniform(-self.apex_shift, self.apex_shift)),
                        float(self.R.uniform(*self.depth)))

    def mask(self, height: int, width: int) -> np.ndarray:
        half_angle, shift, depth = self._params
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        apex_col = (0.5 + shift) * width
        dy, dx = rows + 1.0, cols - apex_col
        angle = np.degrees(np.arctan2(np.abs(dx), dy))
        return (angle <= half_angle) & (np.hypot(dx, dy) <= depth * height)

    def apply(self, value: torch.Tensor) -> torch.Tensor:
        return value * torch.from_numpy(self.mask(*value.shape[-2:])).to(value.dtype)


class RandSpeckled(_RandDictTransform):
    """Multiplicative speckle: the image times (1 + σ·n), n a spatially correlated Gaussian
    field (noise drawn on a grid ``grain`` times coarser, then smoothly enlarged)."""

    def __init__(self, keys, prob: float = 0.3, sigma: tuple[float, float] = (0.05, 0.25),
                 grain: tuple[int, int] = (2, 4)):
        super().__init__(keys, prob)
        self.sigma, self.grain = sigma, grain
        self._sigma, self._grain = sigma[0], grain[0]

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._sigma = float(self.R.uniform(*self.sigma))
        self._grain = int(self.R.randint(self.grain[0], self.grain[1] + 1))

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        coarse = self.R.standard_normal((1, 1, -(-h // self._grain), -(-w // self._grain))).astype(np.float32)
        field = F.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear", align_corners=False)[0]
        return (image * (1 + self._sigma * field)).to(image.dtype)


class UnitClipd(MapTransform):
    """Keep the image in [0, 1] after intensity changes, as preprocessing delivers it."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.clamp(torch.as_tensor(d[key]), 0.0, 1.0)
        return d
