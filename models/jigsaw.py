"""The jigsaw of PMG: cut the image into n x n blocks and shuffle them.

One permutation is drawn per call from a seeded generator and shared by the whole batch (as in
the paper's code). Block size is size // n, so any input size works; when the size is not a
multiple of n the leftover border stays in place.
"""
from __future__ import annotations

import torch


def jigsaw(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    if n <= 1:
        return x
    b, c, h, w = x.shape
    bh, bw = h // n, w // n
    perm = torch.randperm(n * n, generator=generator).to(x.device)
    core = x[:, :, : n * bh, : n * bw]
    blocks = core.reshape(b, c, n, bh, n, bw).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c, bh, bw)
    core = blocks[:, perm].reshape(b, n, n, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, n * bh, n * bw)
    out = x.clone()  # keeps x's memory format (channels_last) and any leftover border
    out[:, :, : n * bh, : n * bw] = core
    return out
