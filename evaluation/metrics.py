"""Metrics as thin wrappers over scikit-learn, plus the reliability bins and the top-2 analysis.

The OOD detection metrics (auroc, aupr, fpr_at_tpr, detection) are defined in models/detection.py,
where the release chooses its default scorer with them, and ECE (sklearn has none) in
models/calibration.py, where training records the val calibration with it; both re-exported here."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from models.calibration import ece  # noqa: F401  (re-exported)
from models.detection import aupr, auroc, detection, fpr_at_tpr  # noqa: F401  (re-exported)


def accuracy(y_true, y_pred) -> float:
    return float(accuracy_score(y_true, y_pred))


def macro_f1(y_true, y_pred, labels=(0, 1)) -> float:
    return float(f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0))


def reliability(confidence, correct, n_bins: int = 15) -> dict:
    """Per bin: mean confidence, accuracy and count (for the reliability diagram)."""
    conf, corr = np.asarray(confidence, float), np.asarray(correct, float)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = {"conf": [], "acc": [], "count": [], "centre": []}
    for b in range(n_bins):
        m = idx == b
        out["centre"].append((b + 0.5) / n_bins)
        out["count"].append(int(m.sum()))
        out["conf"].append(float(conf[m].mean()) if m.any() else float("nan"))
        out["acc"].append(float(corr[m].mean()) if m.any() else float("nan"))
    return out


def topk_analysis(ranked: list[list[str]], labels: list[str], k: int = 2) -> dict:
    """`ranked`: per image its predicted labels best first. Returns the per-image rate that ALL
    `labels` are within the top-k, and per label the share of images with it at top-1 and in top-k."""
    n = len(ranked)
    if n == 0:
        return {"n": 0, "all_in_topk": float("nan"), "top1": {}, "topk": {}}
    return {"n": n,
            "all_in_topk": sum(all(l in r[:k] for l in labels) for r in ranked) / n,
            "top1": {l: sum(r[:1] == [l] for r in ranked) / n for l in labels},
            "topk": {l: sum(l in r[:k] for r in ranked) / n for l in labels}}
