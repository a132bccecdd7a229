"""Paired bootstrap confidence intervals for the differences the paper's claims rest on.

Two models are compared on the same images: each bootstrap replicate draws the images with
replacement (within each group: in-distribution and OOD images separately for an AUROC) and
computes the statistic for both models on that same draw, so the interval is of the paired
difference. With several trials, trial i of one model is paired with trial i of the other,
the replicates of every pair are pooled, and the interval is the 2.5th-97.5th percentile of the
pool (the point estimate: the mean over pairs of the observed value).

The statistics themselves (accuracy, macro F1, AUROC, ECE) are here too, one place for claims.py
and significance.py; each is tested equal to its evaluation.metrics form.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from evaluation import metrics

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



# Statistics for the bootstrap: `stat(groups) -> float` on one trial's per-image arrays.
def mean_of_first(groups) -> float:
    """Accuracy-like statistic: the mean of the first group (e.g. per-image correctness)."""
    return float(np.mean(groups[0])) if len(groups[0]) else float("nan")


def accuracy_stat(groups) -> float:
    """groups[0]: per image (label, prediction) of a binary task; the share correct."""
    o = groups[0]
    return float(np.mean(o[:, 0] == o[:, 1])) if len(o) else float("nan")


def f1_stat(groups) -> float:
    """Macro F1 over the classes 0 and 1 (zero_division 0) from the confusion counts: equal to
    metrics.macro_f1 (tested) and ~50x faster, which thousands of bootstrap replicates need."""
    o = groups[0]
    if not len(o):
        return float("nan")
    tp1 = np.sum((o[:, 0] == 1) & (o[:, 1] == 1))
    tp0 = np.sum((o[:, 0] == 0) & (o[:, 1] == 0))
    wrong = len(o) - tp0 - tp1  # each error is a false positive of one class and a false negative of the other
    return float(np.mean([2 * tp / (2 * tp + wrong) if 2 * tp + wrong else 0.0 for tp in (tp0, tp1)]))


def auroc_stat(groups) -> float:
    """AUROC of in-distribution (positive) against OOD scores as the Mann-Whitney U statistic over
    n_id * n_ood, from scipy's tie-averaged ranks: equal to metrics.auroc (tested) and ~20x faster,
    which thousands of bootstrap replicates need."""
    id_s, ood_s = groups
    n1, n0 = len(id_s), len(ood_s)
    if not n1 or not n0:
        return float("nan")
    u = rankdata(np.r_[id_s, ood_s])[:n1].sum() - n1 * (n1 + 1) / 2
    return float(u / (n1 * n0))


def mean_auroc_stat(groups) -> float:
    """groups = [in-distribution scores, OOD set 1 scores, ...]: mean AUROC over the OOD sets."""
    return float(np.mean([auroc_stat([groups[0], g]) for g in groups[1:]]))


def ece_stat(groups) -> float:
    """groups[0]: per decision (confidence, correct); expected calibration error over 15 bins."""
    g = groups[0]
    return metrics.ece(g[:, 0], g[:, 1].astype(bool), 15) if len(g) else float("nan")
