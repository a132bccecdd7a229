"""Turning a spec's image lists into batches: transforms, a dataset that survives bad files.

A corrupt image in training is skipped, counted and listed (the batch comes back smaller and the
collate function reports the file), never a crash deep in a worker.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import v2 as T2

from data.images import ImageError, load_rgb

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _shift(crop: int) -> list:
    """What a weather, season or camera change does to a photo: colour and brightness, blur, a coarser
    resolution and JPEG compression, each applied at random."""
    return [T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05)], p=0.8),
            T.RandomApply([T2.GaussianBlur(kernel_size=2 * max(1, crop // 32) + 1, sigma=(0.1, 2.0))], p=0.3),
            T.RandomApply([T.Compose([T.Resize(max(8, crop // 2)), T.Resize(crop)])], p=0.2),
            T.RandomApply([T2.JPEG((30, 90))], p=0.3)]


# `--augment`: what is applied after the paper's resize, random crop and flip (torchvision's policies,
# or `shift`); each value takes the crop size.
AUGMENTS = {
    "paper": lambda crop: [],
    "trivialaugment": lambda crop: [T.TrivialAugmentWide()],
    "randaugment": lambda crop: [T.RandAugment()],
    "augmix": lambda crop: [T.AugMix()],
    "shift": _shift,
}


def train_transform(resize: int, crop: int, augment: str = "paper") -> T.Compose:
    """The paper's: Resize((550,550)) -> RandomCrop(448, padding=8) -> flip (padding scaled with crop),
    then the `augment` policy of AUGMENTS on the PIL image."""
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}: one of {', '.join(AUGMENTS)}")
    return T.Compose([T.Resize((resize, resize)), T.RandomCrop(crop, padding=max(1, round(crop / 56))),
                      T.RandomHorizontalFlip(), *AUGMENTS[augment](crop), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(resize: int, crop: int) -> T.Compose:
    """The PMG reference's test transform: Resize((550,550)) -> CenterCrop(448). Objects keep the
    scale they had in training (resize, then a crop), which resizing straight to `crop` would not."""
    return T.Compose([*eval_pixels(resize, crop).transforms[:-1], T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_pixels(resize: int, crop: int) -> T.Compose:
    """`eval_transform` up to the pixels (PILToTensor: ToTensor without its float conversion, which
    `normalize_pixels` does once per batch): uint8 CHW tensors, 4x smaller than floats. Serving
    decodes with it and calls `normalize_pixels` on the batch: the same tensor bit for bit, with
    less per-image work (and so less of it holding the GIL while other threads decode or infer)."""
    return T.Compose([T.Resize((resize, resize)), T.CenterCrop(crop), T.PILToTensor()])


def normalize_pixels(x: torch.Tensor) -> torch.Tensor:
    """A uint8 (N, 3, H, W) batch from `eval_pixels` -> what `eval_transform` gives: ToTensor's
    /255, then Normalize's (x - mean) / std, the same operations in the same order."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(-1, 1, 1)
    return x.float().div(255).sub_(mean).div_(std)


def decode_size(transform) -> tuple[int, int] | None:
    """(width, height) the transform resizes a decoded image to first, or None when it does not
    start with a fixed-size Resize. Passed to `load_rgb`, it lets a large JPEG be decoded at a
    reduced DCT scale (data/images.py); train, eval and the pipeline get it from their transform,
    so they see the same pixels."""
    first = transform.transforms[0] if isinstance(transform, T.Compose) and transform.transforms else transform
    if not isinstance(first, T.Resize):
        return None
    size = first.size
    if isinstance(size, int):  # shorter side -> size: both sides end up at least this large
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[1]), int(size[0])
    if isinstance(size, (tuple, list)) and len(size) == 1:
        return int(size[0]), int(size[0])
    return None


class ImageSet(Dataset):
    """(path, target) pairs; an item is (image tensor or None, target, error message or None).

    `size`: what the decoder may assume the image is resized to (see `decode_size`); "auto" reads
    it from the transform, None always decodes at full size."""

    def __init__(self, items: list[tuple[Path, object]], transform, size="auto"):
        self.items, self.transform = items, transform
        self.size = decode_size(transform) if size == "auto" else size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, target = self.items[i]
        target = torch.as_tensor(target, dtype=torch.long)
        try:
            return self.transform(load_rgb(path, self.size)), target, None
        except ImageError as e:
            return None, target, str(e)


def collate_skip_bad(batch):
    """Stack the good items; beside the batch, (target, message) for each bad one, so a caller
    that uses item indices as targets knows which items failed."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[1], b[2]) for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    return torch.stack([b[0] for b in good]), torch.stack([b[1] for b in good]), bad
