"""Serving cost of each system, measured in one run on the same images.

A system is the set of models needed to answer every task of the spec: efficiency-centric = the
one uni model, multi-task = the one multi model, task-centric = one model per task. Per system:
number of models, forward passes per image (= models), parameters (summed), and the wall-clock
milliseconds per image to run every model of the system over the same preloaded images
(batched, after one warm-up batch, best of `repeats`).
"""
from __future__ import annotations

import time

import torch

from data.images import load_rgb
from data.loading import eval_transform


def _batches(x: torch.Tensor, batch_size: int):
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


@torch.no_grad()
def measure(systems: dict[str, list], paths: list, batch_size: int = 16, device="cpu", repeats: int = 2) -> dict:
    """`systems`: name -> list of (model, (resize, crop)). Returns name -> {models, forward_passes_per_image,
    params, ms_per_image, images}."""
    tensors: dict[tuple[int, int], torch.Tensor] = {}
    for models in systems.values():
        for _, size in models:
            if size not in tensors:
                tf = eval_transform(*size)
                tensors[size] = torch.stack([tf(load_rgb(p)) for p in paths]).to(device)
    out = {}
    for name, models in systems.items():
        for model, size in models:  # warm-up
            model.eval()(tensors[size][:batch_size])
        best = float("inf")
        for _ in range(repeats):
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for model, size in models:
                for b in _batches(tensors[size], batch_size):
                    model(b)
            if torch.cuda.is_available() and str(device).startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        out[name] = {"models": len(models), "forward_passes_per_image": len(models),
                     "params": sum(sum(p.numel() for p in m.parameters()) for m, _ in models),
                     "ms_per_image": 1000 * best / max(len(paths), 1), "images": len(paths)}
    return out
