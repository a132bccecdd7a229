"""Serving's image preprocessing in numpy: decode, resize, centre crop, normalise — no torch.

`Pixels(resize, crop, mean, std)` is the eval transform of a bundle (bundle.json `transform`):
    decode (data.images.load_rgb: EXIF upright, RGB, reduced-scale JPEG decode for large files)
    -> resize to (resize, resize), PIL bilinear with antialiasing
    -> centre crop to (crop, crop), the box torchvision's CenterCrop takes (offsets rounded half to even)
    -> uint8 (3, crop, crop)
and `normalize(batch)` does ToTensor's /255 and Normalize's (x - mean) / std on a uint8 (N, 3, H, W)
batch in float32, the same operations in the same order as data.loading.normalize_pixels. The
result equals data.loading.eval_transform's tensor bit for bit (tests/test_serving.py), so a bundle
served here sees the pixels its model was evaluated on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data.images import load_rgb


def centre_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred crop x crop box, as torchvision computes it."""
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    return left, top, left + crop, top + crop


@dataclass(frozen=True)
class Pixels:
    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"the crop ({self.crop}) must be positive and at most the resize ({self.resize})")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Pixels":
        t = manifest["transform"]
        return cls(int(t["resize"][0]), int(t["crop"][0]), tuple(t["mean"]), tuple(t["std"]))

    def __call__(self, path: str | Path) -> np.ndarray:
        """uint8 (3, crop, crop) of the image at `path`; data.images.ImageError naming it when unreadable."""
        im = load_rgb(path, (self.resize, self.resize))
        im = im.resize((self.resize, self.resize), Image.BILINEAR)
        im = im.crop(centre_box(self.resize, self.resize, self.crop))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)

    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, H, W) -> float32 (N, 3, H, W): /255, then (x - mean) / std per channel."""
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        x = batch.astype(np.float32)
        x /= np.float32(255)
        x -= mean
        x /= std
        return x
