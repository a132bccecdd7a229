"""The OOD filter of a checkpoint: its fitted feature detectors, one table of scorers, and the default.

Scorers are one table: the logit scorers of models.scores (`SCORERS`, e.g. max_logit) and the
feature detectors of models.detectors (`DETECTORS`, e.g. knn, vim); `OODFilter.score(name, logits,
features)` answers for either, from the same forward pass.

The default scorer of a checkpoint is chosen by one rule that sees only the train split (to fit
the detectors), the val split and the spec's `ood_val` sets, never the reported OOD sets:
    the scorer with the highest mean AUROC over the ood_val sets (in-distribution: the val split),
    ties broken by the lower mean FPR@95; with no ood_val sets in the spec, the paradigm's paper
    score (`Paradigm.paper_scorer`).

`fit_filter` fits the detectors and chooses the default in memory; nothing is written here. The
fitted filter that serving uses lives in the checkpoint's release bundle (models/release.py:
detectors.npz and bundle.json, with a threshold per scorer); evaluation fits it again in memory
from the features it caches per checkpoint (evaluation/checkpoint.py), which is cheap. Choosing
the default needs scikit-learn (models/detection.py), which the serving image does not ship.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from models.detection import detection
from models.detectors import DETECTORS, fit_all
from models.pmg import CONCAT
from models.scores import SCORERS
from pipeline.outputs import SCORER_NAMES, check_scorer

RULE = ("highest mean AUROC over the ood_val sets (in-distribution: the val split), ties by lower mean "
        "FPR@95; no ood_val sets: the paradigm's paper score")




@dataclass
class OODFilter:
    detectors: dict
    default: str
    selection: dict = field(default_factory=dict)  # scorer -> {"auroc", "fpr95"}: means over ood_val

    def score(self, name: str, logits: torch.Tensor, features: torch.Tensor, paradigm) -> torch.Tensor:
        """(N,) scores, higher = more in-distribution."""
        if name in SCORERS:
            return SCORERS[name](logits, paradigm)
        return self.detectors[check_scorer(name)].score(features)

    def scores(self, logits: torch.Tensor, features: torch.Tensor, paradigm) -> dict[str, torch.Tensor]:
        """Every scorer of the table."""
        return {name: self.score(name, logits, features, paradigm) for name in (*SCORERS, *self.detectors)}


def heads_linear(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The concat classifier's heads as one Linear map: (weight (C, D), bias (C,)), in logit order."""
    heads = list(model.classifiers[CONCAT].heads.values())
    return torch.cat([h.weight for h in heads]).detach().cpu(), torch.cat([h.bias for h in heads]).detach().cpu()


def choose_default(paradigm, id_scores: dict, ood_scores: dict[str, dict]) -> tuple[str, dict]:
    """(the default scorer by RULE, {scorer: mean AUROC and FPR@95 over the ood_val sets})."""
    if not ood_scores:
        return paradigm.paper_scorer, {}
    table = {}
    for name, s_id in id_scores.items():
        rows = []
        for scores in ood_scores.values():
            y = np.r_[np.ones(len(s_id), int), np.zeros(len(scores[name]), int)]
            rows.append(detection(y, np.r_[s_id.numpy(), scores[name].numpy()]))
        table[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("auroc", "fpr95")}
    best = max(table, key=lambda n: (table[n]["auroc"], -table[n]["fpr95"]))
    return best, table


def fit_filter(ckpt, spec, *, batch_size: int = 32, device="cpu", progress: bool = True, workers: int = 0,
               extract=None) -> tuple[OODFilter, dict]:
    """(the filter, what it was fitted on): every detector fitted on the train split of `spec`
    (the checkpoint's classes, its eval transform), the default chosen on val and ood_val; nothing
    written. `extract(name, items) -> (logits, features)` replaces models.inference.predict_features
    (evaluation passes its cache); names: train, val, ood_val/<set>."""
    if extract is None:
        from models.inference import predict_features

        def extract(name, items):
            return predict_features(ckpt.model, items, ckpt.transform(), batch_size, device, desc=f"{name} features",
                                    progress=progress, workers=workers)
    from models.inference import valid_rows
    classes = list(ckpt.paradigm.classes)
    items = spec.split_samples("train", classes)
    _, feats = extract("train", items)
    detectors = fit_all(feats, torch.tensor([classes.index(c) for _, c in items]), *heads_linear(ckpt.model))
    filt = OODFilter(detectors, ckpt.paradigm.paper_scorer)

    def scores(name, items):
        logits, features = extract(name, items)
        ok = valid_rows(logits)
        return filt.scores(logits[ok], features[ok], ckpt.paradigm)

    ood = {name: scores(f"ood_val/{name}", [(p, None) for p in spec.flat_images(folder)])
           for name, folder in spec.ood_val.items()}
    id_scores = scores("val", spec.split_samples("val", classes)) if ood else {}
    filt.default, filt.selection = choose_default(ckpt.paradigm, id_scores, ood)
    return filt, {"data": str(spec.root), "classes": classes, "n_train": len(items), "ood_val": sorted(spec.ood_val)}


def threshold_at_tpr(scores: torch.Tensor, tpr: float) -> dict:
    """The largest threshold that still accepts ceil(tpr * n) of these in-distribution scores
    (an image is OOD when its score is below it): {threshold, n_val, val_accepted}."""
    if not 0 < tpr <= 1:
        raise ValueError(f"the TPR must be in (0, 1]; got {tpr}")
    if not len(scores):
        raise ValueError("no val scores to choose an OOD threshold on")
    s = scores.sort().values
    k = len(s) - math.ceil(tpr * len(s))
    return {"threshold": float(s[k]), "n_val": len(s), "val_accepted": float((s >= s[k]).float().mean())}
