"""Rebuilding a model from a checkpoint and running it over image sets, with an output cache.

`load_model` rebuilds PMG from the checkpoint's own args (backbone, branch widths, crop) without
pretrained weights, after checking that the checkpoint was trained on this dataset's classes.
`predict` returns the concat-output logits per image in item order; an unreadable image gets a
row of NaN (and a warning), so callers drop it with `valid_rows`. Outputs are cached per
(checkpoint identity, image set, image list, crop): each image set is inferred once per checkpoint.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.loading import ImageSet, collate_skip_bad, eval_transform
from data.spec import Spec
from models import model_from_checkpoint
from utils import CheckpointError, load_checkpoint


def load_model(ckpt_path: str | Path, spec: Spec, device: str | torch.device = "cpu"):
    """(model in eval mode, paradigm rebuilt from `spec`, checkpoint dict); CheckpointError when the
    checkpoint's classes or heads do not match this dataset's spec."""
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    trained_on = list((ckpt.get("spec") or {}).get("classes") or ckpt.get("classes") or [])
    if trained_on != spec.class_names:
        raise CheckpointError(f"{ckpt_path}: trained on a dataset with classes {trained_on}, but {spec.file} "
                              f"defines {spec.class_names}; evaluate it with the dataset it was trained on")
    model, paradigm = model_from_checkpoint(ckpt, spec, ckpt_path)
    heads = [[h.name, h.kind, list(h.classes)] for h in paradigm.heads]
    if list(paradigm.classes) != list(ckpt["classes"]) or heads != [list(h) for h in ckpt.get("heads", heads)]:
        raise CheckpointError(f"{ckpt_path}: trained with classes {ckpt['classes']} and heads {ckpt.get('heads')}, "
                              f"but {spec.file} gives {list(paradigm.classes)} and heads {heads}; "
                              f"evaluate it with the dataset it was trained on")
    return model.to(device).eval(), paradigm, ckpt


@torch.no_grad()
def predict(model, items: list, crop: int, batch_size: int = 32, device="cpu", desc: str = "predict",
            progress: bool = True, workers: int = 0) -> torch.Tensor:
    """Concat-output logits (N, C) for `items` (paths, or (path, anything) pairs), in order; NaN rows
    for unreadable images."""
    paths = [it[0] if isinstance(it, (tuple, list)) else it for it in items]
    ds = ImageSet([(p, i) for i, p in enumerate(paths)], eval_transform(crop))
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


def checkpoint_key(path: str | Path) -> str:
    """Identity of a checkpoint file: resolved path, size and modification time."""
    st = Path(path).stat()
    return hashlib.sha256(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


class CachedPredictor:
    """`predictor(set_name, items)` -> logits, inferred once per (checkpoint, set, images, crop)."""

    def __init__(self, model, ckpt_path, crop: int, cache_dir: str | Path | None, batch_size=32, device="cpu",
                 progress=True, workers: int = 0):
        self.model, self.crop, self.batch_size, self.device, self.progress = model, crop, batch_size, device, progress
        self.workers = workers
        self.key = checkpoint_key(ckpt_path)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.inferred: list[str] = []  # set names actually run through the model (not from cache)

    def __call__(self, set_name: str, items: list) -> torch.Tensor:
        paths = [str(it[0] if isinstance(it, (tuple, list)) else it) for it in items]
        digest = hashlib.sha256("\n".join([set_name, str(self.crop), *paths]).encode()).hexdigest()[:16]
        file = self.cache_dir / f"{self.key}_{digest}.pt" if self.cache_dir else None
        if file is not None and file.is_file():
            cached = torch.load(file, map_location="cpu", weights_only=True)
            if cached.get("paths") == paths:
                return cached["logits"]
        logits = predict(self.model, paths, self.crop, self.batch_size, self.device, desc=set_name,
                         progress=self.progress, workers=self.workers)
        self.inferred.append(set_name)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.tmp")
            torch.save({"paths": paths, "logits": logits}, tmp)
            tmp.replace(file)
        return logits
