"""Model outputs per image set, inferred once per checkpoint and cached.

Outputs — the logits and the penultimate features of the same forward pass (for the OOD detectors
of models/detectors.py) — are cached per (checkpoint content, image set, image list, test
transform): `evaluate.py report` and the notebooks run each image set through each checkpoint once.
A checkpoint is known by its content hash (data.images.content_hash), so a copied or touched file
keeps its entries and a retrained one gets new ones.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from data.images import content_hash
from models.adapt import MAX_IMAGES, bn_adapted
from models.checkpoint import Checkpoint
from models.inference import predict_features


class CachedPredictor:
    """`predictor(set_name, items)` -> (logits, features), inferred once per (checkpoint, set, images,
    transform)."""

    def __init__(self, ckpt: Checkpoint, cache_dir: str | Path | None, batch_size=32, device="cpu",
                 progress=True, workers: int = 0):
        self.ckpt, self.batch_size, self.device, self.progress = ckpt, batch_size, device, progress
        self.workers = workers
        self.sha256 = content_hash(ckpt.path)
        self.key = self.sha256[:16]
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.inferred: list[str] = []  # set names actually run through the model (not from cache)

    def __call__(self, set_name: str, items: list, adapt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`adapt`: by the model with its BatchNorm statistics re-estimated on these images
        (models.adapt.bn_adapted), cached apart from the plain outputs."""
        paths = [str(it[0] if isinstance(it, (tuple, list)) else it) for it in items]
        size = f"{self.ckpt.resize}->{self.ckpt.crop}"
        set_name = f"bn-adapt:{set_name}" if adapt else set_name
        how = [f"statistics of at most {MAX_IMAGES} images"] if adapt else []
        digest = hashlib.sha256("\n".join([set_name, size, *how, *paths]).encode()).hexdigest()[:16]
        file = self.cache_dir / f"{self.key}_{digest}.pt" if self.cache_dir else None
        if file is not None and file.is_file():
            try:
                cached = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated, or not plain tensors (weights_only refuses code): infer again
                print(f"warning: {file}: unusable cache entry ({type(e).__name__}); inferring {set_name} again",
                      file=sys.stderr)
                cached = {}
            if isinstance(cached, dict) and cached.get("paths") == paths and "features" in cached:
                return cached["logits"], cached["features"]  # (older entries held logits only)
        model, transform = self.ckpt.model, self.ckpt.transform()
        if adapt:
            model = bn_adapted(model, paths, transform, self.batch_size, self.device, f"adapt {set_name}",
                               self.progress, self.workers)
        logits, features = predict_features(model, paths, transform, self.batch_size, self.device, desc=set_name,
                                            progress=self.progress, workers=self.workers)
        self.inferred.append(set_name)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")  # two processes may write one entry
            torch.save({"paths": paths, "logits": logits, "features": features}, tmp)
            tmp.replace(file)
        return logits, features
