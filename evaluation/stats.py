"""Paired bootstrap confidence intervals for the differences the paper's claims rest on.

Two models are compared on the same images: each bootstrap replicate draws the images with
replacement (within each group: in-distribution and OOD images separately for an AUROC) and
computes the statistic for both models on that same draw, so the interval is of the paired
difference. With several trials, trial i of one model is paired with trial i of the other,
the replicates of every pair are pooled, and the interval is the 2.5th-97.5th percentile of the
pool (the point estimate: the mean over pairs of the observed value).
"""
from __future__ import annotations

import numpy as np

N_BOOT = 1000  # replicates per trial pair (tests lower it)


def _pooled(value, trials: list, n_boot: int, seed: int) -> dict:
    """`value(trial, idx)` with idx None (observed) or one index array per group (a replicate)."""
    rng = np.random.default_rng(seed)
    observed, pooled = [], []
    for t in trials:
        observed.append(value(t, None))
        for _ in range(n_boot):
            pooled.append(value(t, [rng.integers(0, len(g), len(g)) for g in t[0]]))
    pooled = np.asarray(pooled, dtype=float)
    pooled = pooled[~np.isnan(pooled)]
    lo, hi = np.percentile(pooled, [2.5, 97.5]) if len(pooled) else (np.nan, np.nan)
    return {"value": float(np.mean(observed)) if observed else float("nan"), "lo": float(lo), "hi": float(hi),
            "trials": len(trials)}


def _take(groups, idx):
    return groups if idx is None else [g[i] for g, i in zip(groups, idx)]


def paired_difference(stat, a_trials: list, b_trials: list, n_boot: int | None = None, seed: int = 0) -> dict:
    """stat(a) - stat(b) with its 95 % interval; `stat(groups) -> float`, each trial a list of
    per-image arrays (groups) of the same lengths for a and b. {value, lo, hi, trials}."""
    pairs = list(zip(a_trials, b_trials))
    for a, b in pairs:
        if [len(g) for g in a] != [len(g) for g in b]:
            raise ValueError(f"paired bootstrap on different images: {[len(g) for g in a]} v {[len(g) for g in b]}")
    return _pooled(lambda t, idx: stat(_take(t[0], idx)) - stat(_take(t[1], idx)), pairs, n_boot or N_BOOT, seed)


def interval(stat, trials: list, n_boot: int | None = None, seed: int = 0) -> dict:
    """One model's statistic with its 95 % interval: {value, lo, hi, trials}."""
    return _pooled(lambda t, idx: stat(_take(t[0], idx)), [(t,) for t in trials], n_boot or N_BOOT, seed)


def mean_of_first(groups) -> float:
    """Accuracy-like statistic: the mean of the first group (e.g. per-image correctness)."""
    return float(np.mean(groups[0])) if len(groups[0]) else float("nan")
