"""OOD scores from a model's logits, for torch: one number per image, higher = more in-distribution.

Every scorer is `f(logits, paradigm)`, a value in `SCORERS`: the scorer of the same name in
pipeline.outputs.LOGIT_SCORERS (what each score is: that module's doc), which serving calls
directly, so evaluation and serving score alike. Logits may be on any device, of any float dtype,
and need no grad; the scores come back as a float32 CPU tensor (N,).
"""
from __future__ import annotations

import torch

from pipeline.outputs import LOGIT_SCORERS
from utils import to_numpy


def _scorer(name: str):
    def score(logits: torch.Tensor, paradigm=None) -> torch.Tensor:
        heads = None if paradigm is None else paradigm.output_heads
        return torch.from_numpy(LOGIT_SCORERS[name](to_numpy(logits), heads))
    score.__name__ = score.__qualname__ = name
    return score


SCORERS = {name: _scorer(name) for name in LOGIT_SCORERS}


def all_scores(logits: torch.Tensor, paradigm) -> dict[str, torch.Tensor]:
    """Every scorer of `SCORERS` on these logits."""
    return {name: f(logits, paradigm) for name, f in SCORERS.items()}
