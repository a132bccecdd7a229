"""Paired bootstrap confidence intervals for the differences the paper's claims rest on.

Two models are compared on the same images: each bootstrap replicate draws the images with
replacement (within each group: in-distribution and OOD images separately for an AUROC) and
computes the statistic for both models on that same draw, so the interval is of the paired
difference. With several trials, trial i of one model is paired with trial i of the other,
the replicates of every pair are pooled, and the interval is the 2.5th-97.5th percentile of the
pool (the point estimate: the mean over pairs of the observed value).

The statistics themselves (accuracy, macro F1, AUROC, ECE) are here too, one place for claims.py
and significance.py; each is tested equal to its evaluation.metrics form. Each is written once,
for a stack of replicates (every per-image array with a leading replicate axis), and called on
one trial's arrays through `stat(groups) -> float`: the bootstrap draws a block of replicates as
one index array and computes the statistic for all of them in a few numpy calls (the replicate
at a time, a report spent most of its time in 400,000 calls of scipy's rankdata). A statistic
may also say how to compute itself from the index arrays (`stat.indexed`): AUROC then counts
each replicate's draws of each image and weighs a comparison of every (ID, OOD) pair made once,
instead of ranking every replicate (which, with 1,600 test images, took most of a report's time).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.stats import rankdata


N_BOOT = 1000  # replicates per trial pair (tests lower it)
BLOCK_ELEMENTS = 4_000_000  # per-image values drawn at once (bounds the memory of a block of replicates)


def statistic(batch):
    """`batch(groups) -> (R,)` on per-image arrays with a leading replicate axis (R, n, ...) becomes
    `stat(groups) -> float` on one trial's arrays (n, ...); `stat.batch` is the stacked form and
    `stat.indexed(groups, idx) -> (R,)` the statistic of the draws idx (one (R, n_group) index
    array per group) of one trial's arrays: by default `batch` of the drawn values."""
    @functools.wraps(batch)
    def stat(groups) -> float:
        return float(batch([np.asarray(g)[None] for g in groups])[0])
    stat.batch = batch
    stat.indexed = lambda groups, idx: batch(_take(groups, idx))
    return stat


def _pooled(value, trials: list, n_boot: int, seed: int) -> dict:
    """`value(trial, idx)` -> (R,): the statistic on index arrays idx (one (R, n_group) array per
    group: the observed arrays when each row is arange(n_group))."""
    rng = np.random.default_rng(seed)
    observed, pooled = [], []
    for t in trials:
        sizes = [len(g) for g in t[0]]
        observed.append(value(t, [np.arange(n)[None] for n in sizes])[0])
        block = max(1, BLOCK_ELEMENTS // max(sum(sizes), 1))
        for start in range(0, n_boot, block):
            r = min(block, n_boot - start)
            pooled.append(value(t, [rng.integers(0, n, (r, n)) if n else np.zeros((r, 0), int) for n in sizes]))
    pooled = np.concatenate(pooled) if pooled else np.empty(0)
    pooled = pooled[~np.isnan(pooled)]
    lo, hi = np.percentile(pooled, [2.5, 97.5]) if len(pooled) else (np.nan, np.nan)
    return {"value": float(np.mean(observed)) if observed else float("nan"), "lo": float(lo), "hi": float(hi),
            "trials": len(trials)}


def _take(groups, idx):
    return [np.asarray(g)[i] for g, i in zip(groups, idx)]


def paired_difference(stat, a_trials: list, b_trials: list, n_boot: int | None = None, seed: int = 0) -> dict:
    """stat(a) - stat(b) with its 95 % interval; `stat` one of this module's statistics, each trial a
    list of per-image arrays (groups) of the same lengths for a and b. {value, lo, hi, trials}."""
    pairs = list(zip(a_trials, b_trials))
    for a, b in pairs:
        if [len(g) for g in a] != [len(g) for g in b]:
            raise ValueError(f"paired bootstrap on different images: {[len(g) for g in a]} v {[len(g) for g in b]}")
    return _pooled(lambda t, idx: stat.indexed(t[0], idx) - stat.indexed(t[1], idx), pairs, n_boot or N_BOOT, seed)


def interval(stat, trials: list, n_boot: int | None = None, seed: int = 0) -> dict:
    """One model's statistic with its 95 % interval: {value, lo, hi, trials}."""
    return _pooled(lambda t, idx: stat.indexed(t[0], idx), [(t,) for t in trials], n_boot or N_BOOT, seed)


# Statistics: `stat(groups) -> float` on one trial's per-image arrays; `stat.batch` on stacks of
# them (R replicates); NaN for a set with no image.
def _undefined(replicates: np.ndarray) -> np.ndarray:
    return np.full(len(replicates), np.nan)


@statistic
def mean_of_first(groups):
    """Accuracy-like statistic: the mean of the first group (e.g. per-image correctness)."""
    g = groups[0]
    return g.mean(axis=1) if g.shape[1] else _undefined(g)


@statistic
def accuracy_stat(groups):
    """groups[0]: per image (label, prediction) of a binary task; the share correct."""
    o = groups[0]
    return (o[..., 0] == o[..., 1]).mean(axis=1) if o.shape[1] else _undefined(o)


@statistic
def f1_stat(groups):
    """Macro F1 over the classes 0 and 1 (zero_division 0) from the confusion counts: equal to
    metrics.macro_f1 (tested) and fast enough for thousands of bootstrap replicates."""
    o = groups[0]
    n = o.shape[1]
    if not n:
        return _undefined(o)
    tp1 = np.sum((o[..., 0] == 1) & (o[..., 1] == 1), axis=1)
    tp0 = np.sum((o[..., 0] == 0) & (o[..., 1] == 0), axis=1)
    wrong = n - tp0 - tp1  # each error is a false positive of one class and a false negative of the other
    f1 = [np.divide(2 * tp, 2 * tp + wrong, out=np.zeros(len(o)), where=(2 * tp + wrong) > 0) for tp in (tp0, tp1)]
    return (f1[0] + f1[1]) / 2


@statistic
def auroc_stat(groups):
    """AUROC of in-distribution (positive) against OOD scores as the Mann-Whitney U statistic over
    n_id * n_ood, from scipy's tie-averaged ranks: equal to metrics.auroc (tested)."""
    id_s, ood_s = groups
    n1, n0 = id_s.shape[1], ood_s.shape[1]
    if not n1 or not n0:
        return _undefined(id_s)
    u = rankdata(np.concatenate([id_s, ood_s], axis=1), axis=1)[:, :n1].sum(axis=1) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def _auroc_indexed(groups, idx):
    """auroc_stat of the draws idx: with w, v each replicate's count of draws of each ID and OOD
    image and C[i, j] = [id_i > ood_j] + [id_i == ood_j] / 2, U = w C v (sets too large for C in
    memory fall back to ranking the drawn values)."""
    id_s, ood_s = np.asarray(groups[0]), np.asarray(groups[1])
    n1, n0, r = len(id_s), len(ood_s), len(idx[0])
    if not n1 or not n0 or n1 * n0 > MAX_PAIRS:
        return auroc_stat.batch(_take(groups, idx))
    c = (id_s[:, None] > ood_s[None, :]) + 0.5 * (id_s[:, None] == ood_s[None, :])

    def counts(i, n):
        return np.bincount((i + np.arange(r)[:, None] * n).ravel(), minlength=r * n).reshape(r, n).astype(float)

    return ((counts(idx[0], n1) @ c) * counts(idx[1], n0)).sum(axis=1) / (n1 * n0)


MAX_PAIRS = 20_000_000  # (ID, OOD) pairs compared at once by _auroc_indexed (160 MB of float64)
auroc_stat.indexed = _auroc_indexed


@statistic
def mean_auroc_stat(groups):
    """groups = [in-distribution scores, OOD set 1 scores, ...]: mean AUROC over the OOD sets."""
    return np.mean([auroc_stat.batch([groups[0], g]) for g in groups[1:]], axis=0)


mean_auroc_stat.indexed = lambda groups, idx: np.mean(
    [auroc_stat.indexed([groups[0], g], [idx[0], i]) for g, i in zip(groups[1:], idx[1:])], axis=0)


@statistic
def ece_stat(groups, n_bins: int = 15):
    """groups[0]: per decision (confidence, correct); expected calibration error over 15 equal-width
    bins (k/15, (k+1)/15]: the sum over bins of |correct - confidence| summed in the bin, over n
    (metrics.ece, tested)."""
    g = groups[0].astype(float)
    r, n = g.shape[:2]
    if not n:
        return _undefined(g)
    conf, corr = g[..., 0], g[..., 1]
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1) + n_bins * np.arange(r)[:, None]
    gap = np.bincount(bins.ravel(), weights=(corr - conf).ravel(), minlength=r * n_bins).reshape(r, n_bins)
    return np.abs(gap).sum(axis=1) / n


def ece_if_calibrated(trials: list, n_draws: int | None = None, seed: int = 0) -> dict:
    """What ECE a perfectly calibrated model with the same confidences would measure on the same
    number of decisions (consistency resampling, Broecker and Smith 2007): each decision's outcome
    drawn as correct with probability its confidence, `n_draws` times per trial. ECE is biased
    upward on a finite set, so this is the floor a measured ECE can be read against. `trials` as
    for `interval(ece_stat, ...)`: per trial [(confidence, correct) per decision]. {mean, hi: the
    95th percentile of the draws, p: the share of draws at or above each trial's measured ECE
    (pooled; small p: miscalibration beyond what the sample size explains), trials}."""
    rng = np.random.default_rng(seed)
    draws, above = [], []
    for t in trials:
        g = np.asarray(t[0], float)
        conf = g[:, 0]
        outcome = (rng.random((n_draws or N_BOOT, len(conf))) < conf).astype(float)
        d = ece_stat.batch([np.stack([np.broadcast_to(conf, outcome.shape), outcome], axis=-1)])
        draws.append(d)
        above.append(d >= ece_stat([g]))
    if not draws:
        return {"mean": float("nan"), "hi": float("nan"), "p": float("nan"), "trials": 0}
    d = np.concatenate(draws)
    return {"mean": float(d.mean()), "hi": float(np.percentile(d, 95)), "p": float(np.concatenate(above).mean()),
            "trials": len(trials)}


def median_interval(values, confidence: float = 0.95) -> dict:
    """The median of repeated measurements with its distribution-free interval: the order
    statistics that cover the population median with at least `confidence` (scipy's quantile_test;
    NaN ends when there are too few values, e.g. fewer than 6 for 95 %). {value, lo, hi, n}."""
    from scipy.stats import quantile_test
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return {"value": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    ci = quantile_test(v, q=float(np.median(v)), p=0.5).confidence_interval(confidence)
    return {"value": float(np.median(v)), "lo": float(ci.low), "hi": float(ci.high), "n": int(v.size)}
