"""Batched inference over a list of image files, shared by evaluation and serving.

`predict` returns the concat-output logits per image in item order; an unreadable image gets a
row of NaN (and a warning), so callers drop it with `valid_rows`.
"""
from __future__ import annotations

import sys

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.loading import ImageSet, collate_skip_bad


@torch.inference_mode()
def predict(model, items: list, transform, batch_size: int = 32, device="cpu", desc: str = "predict",
            progress: bool = True, workers: int = 0) -> torch.Tensor:
    """Logits (N, C) for `items` (paths, or (path, anything) pairs), in order; NaN rows for
    unreadable images; ValueError when none can be read."""
    paths = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    ds = ImageSet([(p, i) for i, p in enumerate(paths)], transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_skip_bad)
    out = None
    model.eval()
    for images, idx, bad in tqdm(loader, desc=desc, leave=False, disable=not progress):
        for _, msg in bad:
            print(f"warning: skipped {msg}", file=sys.stderr)
        if images is None:
            continue
        logits = model(images.to(device)).float().cpu()
        if out is None:
            out = torch.full((len(paths), logits.shape[1]), float("nan"))
        out[idx] = logits
    if out is None:
        raise ValueError(f"{desc}: none of the {len(paths)} images could be read")
    return out


def valid_rows(logits: torch.Tensor) -> torch.Tensor:
    return ~torch.isnan(logits).any(1)
