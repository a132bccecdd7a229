"""OOD scores: one number per image, higher = more in-distribution.

`SCORERS` work on a logits tensor (N, C):
- max_logit:   max_c z_c (the paper's detector, Hendrycks et al. [7]);
- max_softmax: max_c softmax(z)_c (what the authors' code actually used);
- energy:      logsumexp_c z_c (negative free energy).
For the multi-task model the tensor is the concatenation of all head outputs (binary heads' single
logits and the softmax head's logits), so max_logit/energy are taken over that concatenation and
max_softmax over the heads' own probabilities (sigmoid for binary heads, softmax for the softmax head),
see `head_probabilities`. The paper's score for the multi-task model is `kl_to_uniform`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(1).values


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1).max(1).values


def energy(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, 1)


SCORERS = {"max_logit": max_logit, "max_softmax": max_softmax, "energy": energy}


def head_probabilities(logits: torch.Tensor, heads) -> torch.Tensor:
    """Each head's own probabilities side by side: sigmoid(z) for a binary head, softmax for a
    softmax head; same width as `logits`."""
    parts, start = [], 0
    for h in heads:
        z = logits[:, start:start + h.size]
        parts.append(torch.sigmoid(z) if h.kind == "binary" else z.softmax(1))
        start += h.size
    return torch.cat(parts, 1)


def kl_to_uniform(logits: torch.Tensor, heads) -> torch.Tensor:
    """Per image: sum over heads of KL(head distribution || uniform).

    Binary head: KL(Bernoulli(p) || Bernoulli(0.5)) = p log p + (1-p) log(1-p) + log 2;
    softmax head over K classes: sum_k q_k log q_k + log K. Log-probabilities come from
    logsigmoid / log_softmax (never log of a rounded probability), and the sum runs over each
    image's heads, so the result is one score per image (the authors' code passed probabilities
    where log-probabilities belong and scored elements, not images). 0 for an all-uniform output;
    larger = more confident = more in-distribution.
    """
    logits = logits.double()
    total, start = torch.zeros(len(logits), dtype=torch.float64), 0
    for h in heads:
        z = logits[:, start:start + h.size]
        start += h.size
        if h.kind == "binary":
            z = z[:, 0]
            logp, log1mp = F.logsigmoid(z), F.logsigmoid(-z)
            kl = logp.exp() * logp + log1mp.exp() * log1mp + torch.log(torch.tensor(2.0, dtype=torch.float64))
        else:
            logq = F.log_softmax(z, 1)
            kl = (logq.exp() * logq).sum(1) + torch.log(torch.tensor(float(h.size), dtype=torch.float64))
        total += kl.clamp(min=0)
    return total.float()


def all_scores(logits: torch.Tensor, heads) -> dict[str, torch.Tensor]:
    """Every scorer for a model with these heads; 'kl_uniform' is defined for every paradigm (for a
    single softmax head it is log K minus the entropy)."""
    if len(heads) == 1 and heads[0].kind == "softmax":
        out = {name: f(logits) for name, f in SCORERS.items()}
    else:
        out = {"max_logit": max_logit(logits), "max_softmax": head_probabilities(logits, heads).max(1).values,
               "energy": energy(logits)}
    out["kl_uniform"] = kl_to_uniform(logits, heads)
    return out


def paper_scorer(paradigm_name: str) -> str:
    """The paper's OOD score per paradigm: max logit, KL to uniform for the multi-task model."""
    return "kl_uniform" if paradigm_name == "multi" else "max_logit"
