"""OOD detection metrics as thin wrappers over scikit-learn: AUROC, AUPR and the FPR at 95 % TPR.

One definition for the release (models/ood.py chooses the default scorer with them) and the
evaluation (evaluation/metrics.py re-exports them). scikit-learn is imported on first use: the
serving image does not ship it, and nothing it runs calls these.
"""
from __future__ import annotations

import numpy as np


def _sklearn_metrics():
    try:
        import sklearn.metrics
    except ImportError as e:
        raise ImportError(f"the OOD detection metrics need scikit-learn ({e}); release and evaluate where "
                          f"requirements.txt is installed") from None
    return sklearn.metrics


def _two_classes(y) -> bool:
    return len(np.unique(np.asarray(y))) == 2


def auroc(y_true, score) -> float:
    """y_true 1 = positive (in-distribution / target class); NaN when only one class is present."""
    return float(_sklearn_metrics().roc_auc_score(y_true, score)) if _two_classes(y_true) else float("nan")


def aupr(y_true, score) -> float:
    return float(_sklearn_metrics().average_precision_score(y_true, score)) if _two_classes(y_true) else float("nan")


def fpr_at_tpr(y_true, score, tpr_level: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches `tpr_level`."""
    if not _two_classes(y_true):
        return float("nan")
    fpr, tpr, _ = _sklearn_metrics().roc_curve(y_true, score)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def detection(y_true, score) -> dict:
    return {"auroc": auroc(y_true, score), "aupr": aupr(y_true, score), "fpr95": fpr_at_tpr(y_true, score)}
