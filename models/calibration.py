"""Temperature scaling (Guo et al. 2017): post-hoc calibration of a model's probabilities, fitted on
the val split only.

One temperature per head (efficiency-centric and task-centric: one; multi-task: one per binary head
and one for the softmax head), each the value that minimises the head's negative log-likelihood
(scikit-learn's `log_loss`) on the val images that head has a label for, found by scipy's bounded
scalar minimiser over log T in [log 0.05, log 20]. The heads' losses are separate terms, so fitting
them one at a time minimises their sum. Dividing a head's logits by T > 0 keeps its argmax and the
sign of a binary logit, so no decision and no accuracy changes; the label ranking and the OOD
scorers use the unscaled logits (pipeline/outputs.py, where a temperature is applied).

The record (`fit`) is stored in the checkpoint as `calibration` (train.py writes it into best.pt at
the end of training) and in the release bundle's bundle.json:
    {method, split: "val", temperatures {head: T}, n {head: labelled val decisions}, bounds,
     val: {before, after: {ece, nll, brier, mean_confidence, accuracy, n_decisions}}}
A checkpoint without one (written before calibration existed) is fitted by the same `fit` from its
val logits where it is evaluated or released (`of_checkpoint`), never on test.

`figures` measures one set of decisions (`Paradigm.decisions`: one per labelled (image, head) pair):
ECE (15 equal-width bins; scikit-learn has none), NLL (the mean of -log p(labelled class) over the
decisions, `log_loss`) and Brier (`brier_score_loss` over each head's classes, summed over the
classes, range [0, 2]; a binary head as its two classes; heads pooled by their decisions).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from models.paradigms import IGNORE, Paradigm
from pipeline.outputs import calibration_name as describe  # noqa: F401  (re-exported: train.py prints it)
from pipeline.outputs import probabilities
from utils import to_numpy

METHOD = "temperature scaling: one temperature per head, minimising the val negative log-likelihood"
SPLIT = "val"
BOUNDS = (0.05, 20.0)
N_BINS = 15
FIGURES = ("ece", "nll", "brier", "mean_confidence", "accuracy", "n_decisions")


def ece(confidence, correct, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |acc - conf| * share."""
    conf, corr = np.asarray(confidence, float), np.asarray(correct, float)
    if conf.size == 0:
        return float("nan")
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # bins (k/n, (k+1)/n]
    total = 0.0
    for b in np.unique(idx):
        m = idx == b
        total += m.mean() * abs(corr[m].mean() - conf[m].mean())
    return float(total)


def head_data(paradigm: Paradigm, logits: torch.Tensor,
              labels: list[str]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(head name, kind, its logits on the images it has a label for (float64), their targets) per head."""
    blocks = paradigm.output_heads.split(to_numpy(logits).astype(np.float64))
    out = []
    for h in paradigm.heads:
        y = np.array([h.target(c) for c in labels], dtype=int)
        keep = y != IGNORE
        out.append((h.name, h.kind, blocks[h.name][keep], y[keep]))
    return out


def _proba(kind: str, z: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities of a head: a binary head as (1 - p, p)."""
    p = probabilities(kind, z)
    return np.c_[1 - p[:, 0], p[:, 0]] if kind == "binary" else p


def _nll_sum(kind: str, z: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import log_loss
    p = _proba(kind, z)
    return float(log_loss(y, p, labels=list(range(p.shape[1])), normalize=False))


def _brier_sum(kind: str, z: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import brier_score_loss
    p = _proba(kind, z)
    return float(brier_score_loss(y, p, labels=list(range(p.shape[1])), scale_by_half=False)) * len(y)


def fit_temperature(kind: str, z: np.ndarray, y: np.ndarray) -> float:
    """The temperature in BOUNDS minimising the NLL of one head's logits `z` (N, size) with targets
    `y`; 1.0 for a head with no labelled image, and for one that makes no error on them: its NLL
    then falls without bound as T -> 0, and a small val set it gets all right says nothing about
    how sure it should be (sharpened to the bound, its first error would be a confident one)."""
    from scipy.optimize import minimize_scalar
    if not len(y) or (_proba(kind, z).argmax(1) == y).all():
        return 1.0
    res = minimize_scalar(lambda s: _nll_sum(kind, z / math.exp(s), y), bounds=tuple(map(math.log, BOUNDS)),
                          method="bounded", options={"xatol": 1e-5})
    return float(math.exp(res.x))


def figures(paradigm: Paradigm, logits: torch.Tensor, labels: list[str],
            temperatures=None) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """({ece, nll, brier, mean_confidence, accuracy, n_decisions}, (confidence, correct) per decision)
    of the model's decisions on these images, its logits scaled by `temperatures` (one per head in
    head order; None: as trained)."""
    z = logits if temperatures is None else paradigm.calibrated(logits, temperatures)
    conf, correct = (t.numpy() for t in paradigm.decisions(z, labels))
    nll = brier = 0.0
    n = 0
    for _, kind, zh, y in head_data(paradigm, z, labels):
        if len(y):
            nll, brier, n = nll + _nll_sum(kind, zh, y), brier + _brier_sum(kind, zh, y), n + len(y)
    nan = float("nan")
    return ({"ece": ece(conf, correct), "nll": nll / n if n else nan, "brier": brier / n if n else nan,
             "mean_confidence": float(conf.mean()) if n else nan, "accuracy": float(correct.mean()) if n else nan,
             "n_decisions": n}, (conf, correct))


def fit(paradigm: Paradigm, logits: torch.Tensor, labels: list[str]) -> dict:
    """The calibration record (module doc) fitted on these val logits and class labels."""
    data = head_data(paradigm, logits, labels)
    temps = {name: fit_temperature(kind, z, y) for name, kind, z, y in data}
    before, _ = figures(paradigm, logits, labels)
    after, _ = figures(paradigm, logits, labels, paradigm.output_heads.ordered(temps))
    return {"method": METHOD, "split": SPLIT, "temperatures": temps, "n": {name: len(y) for name, _, _, y in data},
            "bounds": list(BOUNDS), "val": {"before": before, "after": after}}


def temperatures(record: dict | None, paradigm: Paradigm) -> tuple[float, ...] | None:
    """The record's temperatures in head order (None without a record)."""
    return None if record is None else paradigm.output_heads.ordered(record["temperatures"])


def of_checkpoint(ckpt, val) -> tuple[dict, str]:
    """(the checkpoint's calibration record, where it came from): the one stored in the checkpoint,
    else fitted now by `fit` on `val()` -> (val logits, class labels) (a checkpoint written before
    calibration existed)."""
    stored = ckpt.calibration
    if stored:
        return stored, "stored in the checkpoint (fitted on val at the end of training)"
    return fit(ckpt.paradigm, *val()), "fitted on val from the checkpoint's outputs (the checkpoint has none)"


def val_outputs(ckpt, spec, extract) -> tuple[torch.Tensor, list[str]]:
    """(val logits, class labels) of the checkpoint's readable val images; `extract(name, items) ->
    (logits, features)` (evaluation's cache, a release's memo) under the name `val`."""
    from models.inference import valid_rows
    items = spec.split_samples(SPLIT, list(ckpt.paradigm.classes))
    logits, _ = extract(SPLIT, items)
    ok = valid_rows(logits)
    return logits[ok], [c for (_, c), k in zip(items, ok.tolist()) if k]


def calibrate_checkpoint(path, spec, device="cpu", batch_size: int = 32, workers: int = 0,
                         progress: bool = False) -> dict:
    """Fit the calibration of the checkpoint file `path` on its val split and store it in the file
    as `calibration` (written atomically); returns the record."""
    from models import checkpoint as checkpoints
    from models.inference import predict_features
    ckpt = checkpoints.load(path, spec, device)

    def extract(name, items):
        return predict_features(ckpt.model, items, ckpt.transform(), batch_size, device, desc=f"{name} (calibration)",
                                progress=progress, workers=workers)
    record = fit(ckpt.paradigm, *val_outputs(ckpt, spec, extract))
    checkpoints.save_calibration(ckpt, record)
    return record
