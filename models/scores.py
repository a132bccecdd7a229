"""OOD scores from a model's logits: one number per image, higher = more in-distribution.

Every scorer is `f(logits, paradigm)`, a value in `SCORERS`, shared by evaluation and serving:
- max_logit:   max over the concatenated logits (the paper's detector, Hendrycks et al. [7]);
- max_softmax: max over the heads' own probabilities (sigmoid for a binary head, softmax for a
               softmax head): for one softmax head, the max softmax probability the authors' code used;
- energy:      logsumexp over the concatenated logits (negative free energy);
- kl_uniform:  sum over heads of KL(head distribution || uniform): the paper's multi-task score,
               defined for every paradigm (one softmax head: log K minus the entropy).
`Paradigm.paper_scorer` names the paper's score of each design.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def max_logit(logits: torch.Tensor, paradigm=None) -> torch.Tensor:
    return logits.max(1).values


def max_softmax(logits: torch.Tensor, paradigm=None) -> torch.Tensor:
    if paradigm is None:
        return logits.softmax(1).max(1).values
    return torch.cat([h.probabilities(z) for h, z in zip(paradigm.heads, paradigm.split(logits).values())],
                     1).max(1).values


def energy(logits: torch.Tensor, paradigm=None) -> torch.Tensor:
    return torch.logsumexp(logits, 1)


def kl_uniform(logits: torch.Tensor, paradigm) -> torch.Tensor:
    """Per image: sum over heads of KL(head distribution || uniform).

    Binary head: KL(Bernoulli(p) || Bernoulli(0.5)) = p log p + (1-p) log(1-p) + log 2;
    softmax head over K classes: sum_k q_k log q_k + log K. Log-probabilities come from
    logsigmoid / log_softmax (never log of a rounded probability), and the sum runs over each
    image's heads, so the result is one score per image (the authors' code passed probabilities
    where log-probabilities belong and scored elements, not images). 0 for an all-uniform output.
    """
    total = torch.zeros(len(logits), dtype=torch.float64)
    for h, z in zip(paradigm.heads, paradigm.split(logits.double()).values()):
        if h.kind == "binary":
            logp, log1mp = F.logsigmoid(z[:, 0]), F.logsigmoid(-z[:, 0])
            kl = logp.exp() * logp + log1mp.exp() * log1mp + math.log(2)
        else:
            logq = F.log_softmax(z, 1)
            kl = (logq.exp() * logq).sum(1) + math.log(h.size)
        total += kl.clamp(min=0)
    return total.float()


SCORERS = {"max_logit": max_logit, "max_softmax": max_softmax, "energy": energy, "kl_uniform": kl_uniform}


def all_scores(logits: torch.Tensor, paradigm) -> dict[str, torch.Tensor]:
    """Every scorer of `SCORERS` on these logits."""
    return {name: f(logits, paradigm) for name, f in SCORERS.items()}
