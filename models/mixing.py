"""Two classes in one training image, so that the model learns to rank a second true label second.

Single-label training gives a softmax no reason to put the second label of a defect+dirt panel in
its top-2. CutMix (Yun et al. 2019) pastes a box of a partner image into each image; mixup (Zhang
et al. 2018) blends the two. The target is the pair's soft label `lam * a + (1 - lam) * b`, with
`lam` the share of the image that is still the image's own (CutMix: 1 - pasted area, exact after
the box is clipped to the image; mixup: the blend weight), drawn from Beta(alpha, alpha).

- Partners are drawn from the batch, each image paired with one of another class (another target
  row) when the batch has one; a pair of the same class changes nothing but the pixels.
- A batch is mixed with probability `prob`; one box (or one blend weight) per batch.
- Mixing is done once per batch, BEFORE the jigsaw, and the same mixed batch goes through all
  four PMG steps: the jigsaw only moves blocks, so each class keeps exactly its share of the
  pixels and the soft target stays true at every granularity (mixing after the jigsaw would paste
  one box across the shuffled blocks of the other image, and the fine steps would learn patches
  from a different mixture than the concat step).
- The loss is `lam * loss(a) + (1 - lam) * loss(b)`: for a softmax head exactly the cross-entropy
  with the soft target (cross-entropy is linear in the target), for a binary head the BCE with the
  mixed target, and a head that ignores one image of the pair (IGNORE) learns from the other.

Every draw comes from the seeded generator of the step, so a run is reproducible and resumable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIXES = ("none", "cutmix", "mixup")


@dataclass(frozen=True)
class Mixed:
    images: torch.Tensor
    partner_targets: torch.Tensor  # the partner's target rows (N, heads)
    lam: float  # share of the own image (and weight of its own target)

    def loss(self, paradigm, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        own = paradigm.loss(logits, targets)
        return own if self.lam == 1 else self.lam * own + (1 - self.lam) * paradigm.loss(logits, self.partner_targets)


def partners(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each row, the index of a random other row with a different target when there is one."""
    n = len(targets)
    order = torch.randperm(n, generator=generator)
    same = (targets[:, None, :] == targets[None, :, :]).all(2)  # (N, N)
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        other = order[~same[i, order]]  # different class, in the random order
        out[i] = other[0] if len(other) else order[i]
    return out


def beta(alpha: float, generator: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, seeded from the torch generator (torch's Beta takes none)."""
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def cut_box(h: int, w: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a box of area ~(1 - lam) h w at a uniform centre, clipped."""
    r = (1 - lam) ** 0.5
    ch, cw = torch.randint(0, h, (1,), generator=generator).item(), torch.randint(0, w, (1,), generator=generator).item()
    bh, bw = int(round(h * r)), int(round(w * r))
    return max(ch - bh // 2, 0), min(ch + bh - bh // 2, h), max(cw - bw // 2, 0), min(cw + bw - bw // 2, w)


def cutmix(images: torch.Tensor, partner: torch.Tensor, lam: float, generator: torch.Generator):
    """(images with the partner's box pasted in, lam recomputed from the pasted area)."""
    h, w = images.shape[-2:]
    t, b, l, r = cut_box(h, w, lam, generator)
    out = images.clone()
    out[:, :, t:b, l:r] = images[partner, :, t:b, l:r]
    return out, 1 - (b - t) * (r - l) / (h * w)


def mixup(images: torch.Tensor, partner: torch.Tensor, lam: float, generator=None):
    return lam * images + (1 - lam) * images[partner], lam


KINDS = {"cutmix": cutmix, "mixup": mixup}


@dataclass(frozen=True)
class Mixer:
    kind: str = "none"
    prob: float = 0.5
    alpha: float = 1.0

    def __post_init__(self):
        if self.kind not in MIXES:
            raise ValueError(f"unknown --mix '{self.kind}'; choose one of {', '.join(MIXES)}")
        if not 0 <= self.prob <= 1 or self.alpha <= 0:
            raise ValueError(f"--mix-prob must be in [0, 1] and --mix-alpha > 0; got {self.prob}, {self.alpha}")

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator) -> Mixed:
        if self.kind == "none" or len(images) < 2 or torch.rand(1, generator=generator).item() >= self.prob:
            return Mixed(images, targets, 1.0)
        partner = partners(targets.cpu(), generator).to(images.device)
        mixed, lam = KINDS[self.kind](images, partner, beta(self.alpha, generator), generator)
        return Mixed(mixed, targets[partner], lam)
