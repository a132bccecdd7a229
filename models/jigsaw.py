"""The jigsaw of PMG: cut the image into n x n blocks and shuffle them.

One permutation is drawn per call from a seeded generator and shared by the whole batch (as in
the paper's code). Block size is size // n, so any input size works; when the size is not a
multiple of n the leftover border stays in place.

`cycle` (the default) draws as the PMG reference does: its successive swaps with block 0 give a
random n²-cycle, so no block ever stays in place (Sattolo's algorithm draws one uniformly among
cycles). `uniform` draws any permutation: on average one block stays put, and for n = 2 one
batch in 24 is not shuffled at all.
"""
from __future__ import annotations

import torch

PERMUTATIONS = ("cycle", "uniform")


def random_cycle(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random cyclic permutation of range(n) (Sattolo's algorithm): no fixed point."""
    perm = list(range(n))
    draws = torch.rand(max(n - 1, 0), generator=generator).tolist()
    for i, u in zip(range(n - 1, 0, -1), draws):
        j = int(u * i)  # uniform in [0, i): never i itself, which is what makes it one cycle
        perm[i], perm[j] = perm[j], perm[i]
    return torch.tensor(perm)


def draw_permutation(n: int, generator: torch.Generator, kind: str = "cycle") -> torch.Tensor:
    if kind == "cycle":
        return random_cycle(n, generator)
    if kind == "uniform":
        return torch.randperm(n, generator=generator)
    raise ValueError(f"unknown jigsaw permutation '{kind}'; choose one of {', '.join(PERMUTATIONS)}")


def jigsaw(x: torch.Tensor, n: int, generator: torch.Generator, kind: str = "cycle") -> torch.Tensor:
    """x with its n x n blocks permuted: output block (i, j) is input block perm[i * n + j].

    Two passes over the data: one gather of every block into place order, one copy into the
    output, which keeps x's memory format (channels_last); the leftover border, if any, is copied
    from x."""
    if n <= 1:
        return x
    b, c, h, w = x.shape
    bh, bw = h // n, w // n
    perm = draw_permutation(n * n, generator, kind).to(x.device)
    rows, cols = (perm // n).view(n, n), (perm % n).view(n, n)
    exact = n * bh == h and n * bw == w
    out = torch.empty_like(x) if exact else x.clone()

    def blocks(t: torch.Tensor) -> torch.Tensor:  # a (b, c, n, bh, n, bw) view of the core
        return t[:, :, : n * bh, : n * bw].unflatten(2, (n, bh)).unflatten(4, (n, bw))

    # Advanced indices on dims 2 and 4 put the (n, n) block grid first: (n, n, b, c, bh, bw).
    blocks(out).permute(2, 4, 0, 1, 3, 5).copy_(blocks(x)[:, :, rows, :, cols, :])
    return out
