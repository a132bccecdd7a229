"""Batched inference over a list of image files, shared by evaluation and serving.

`predict` returns the concat-output logits per image in item order; `predict_features` also the
model's penultimate features from the same forward pass (`PMG.forward(..., features=True)`), for
the feature-space OOD detectors of models/detectors.py. An unreadable image gets a row of NaN
(and a warning), so callers drop it with `valid_rows`.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.loading import ImageSet, collate_skip_bad


def paths_of(items: list) -> list:
    return [it[0] if isinstance(it, (tuple, list)) else it for it in items]


def batches(items: list, transform, batch_size, workers, desc, progress):
    """(images, positions in `items`) per batch of readable images, in order; each unreadable one is
    named in a warning."""
    ds = ImageSet([(p, i) for i, p in enumerate(paths_of(items))], transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip_bad)
    for images, idx, bad in tqdm(loader, desc=desc, leave=False, disable=not progress):
        for _, msg in bad:
            print(f"warning: skipped {msg}", file=sys.stderr)
        if images is not None:
            yield images, idx


@torch.inference_mode()
def _infer(model, items: list, transform, batch_size, device, desc, progress, workers,
           features: bool) -> list[torch.Tensor]:
    paths = paths_of(items)
    out = None
    model.eval()
    for images, idx in batches(items, transform, batch_size, workers, desc, progress):
        x = images.to(device)
        parts = model(x, features=True) if features else (model(x),)
        parts = [p.float().cpu() for p in parts]
        if out is None:
            out = [torch.full((len(paths), p.shape[1]), float("nan")) for p in parts]
        for o, p in zip(out, parts):
            o[idx] = p
    if out is None:
        raise ValueError(f"{desc}: none of the {len(paths)} images could be read")
    return out


def predict(model, items: list, transform, batch_size: int = 32, device="cpu", desc: str = "predict",
            progress: bool = True, workers: int = 0) -> torch.Tensor:
    """Logits (N, C) for `items` (paths, or (path, anything) pairs), in order; NaN rows for
    unreadable images; ValueError when none can be read."""
    return _infer(model, items, transform, batch_size, device, desc, progress, workers, False)[0]


def predict_features(model, items: list, transform, batch_size: int = 32, device="cpu", desc: str = "predict",
                     progress: bool = True, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, C), penultimate features (N, D)) from one forward pass per batch; as `predict`."""
    logits, feats = _infer(model, items, transform, batch_size, device, desc, progress, workers, True)
    return logits, feats


def valid_rows(logits: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(logits).any(1)
