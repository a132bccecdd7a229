"""OOD detectors on the model's penultimate features, fitted once on a checkpoint's train split.

The features are the concat classifier's hidden layer after ELU, from the same forward pass as
the logits (`PMG.forward(x, features=True)`, why that layer: models/pmg.py). Every detector is a
value in `DETECTORS`: `fit(features, labels)`, `score(features) -> (N,)` (higher = more
in-distribution, as models.scores), and `state()` / `from_state()` for a release bundle
(tensors and plain data; models/release.py stores them as arrays).
- knn:         Sun et al. 2022: minus the Euclidean distance of the L2-normalised feature to its
               k-th nearest L2-normalised train feature. k = 50, or a tenth of the bank when it
               holds under 500 features (at least 1); the bank is at most 10,000 train features
               (a seeded random subsample beyond that).
- mahalanobis: Lee et al. 2018: class means and one shared (tied) covariance; minus the smallest
               squared Mahalanobis distance to a class mean.
- rmds:        Ren et al. 2021, relative Mahalanobis: per class, that distance minus the distance
               under one background Gaussian fitted to all train features; minus the smallest.
- vim:         Wang et al. 2022, Virtual-logit Matching: the energy (logsumexp) of the logits minus
               alpha times the norm of the feature's residual outside the principal subspace of the
               train features (centred on the heads' origin u = -pinv(W) b; the subspace keeps half
               the feature width, as ViM's 1000 of 2048, and at least the number of classes + 1;
               alpha = mean train max logit / mean train residual norm). The logits are recomputed
               from the features and the heads' weights, which are the heads' exact Linear maps.
Classes are the dataset classes of the training images (`Paradigm.classes`), also for multi-task
and task-centric models, not their heads. Covariances are Ledoit-Wolf shrunk towards a scaled
identity (the coefficient comes from the data: ~0 with many images, larger on tiny sets) plus a
1e-6 relative ridge, so a train split smaller than the feature width still gives an invertible
matrix. Everything is computed in float64 and stored as tensors and plain data.

Written here in plain torch rather than taken from pytorch-ood 0.4.0: its KNN needs scikit-learn
(not a serving dependency) and keeps a sklearn index that cannot be stored as plain arrays; its
Mahalanobis divides no covariance by N and adds only a fixed 1e-6 ridge (near-singular when a
train split is narrower than the features) and asserts that every class index occurs; and
its detectors have no state to save, so the fitted tensors would be pulled out of them anyway.

`fit(features, labels, weight, bias)` takes the heads' concatenated Linear weight and bias (only
ViM uses them). Fitting on a checkpoint and the choice of the default detector are in
models/ood.py. Scoring is computed once, in numpy, by pipeline.outputs.DETECTOR_SCORERS from the
fitted `state()` (as serving scores from a bundle); `score` here converts to and from torch.
"""
from __future__ import annotations

import torch

from pipeline.outputs import DETECTOR_SCORERS
from utils import to_numpy

FEATURES = "concat classifier hidden layer after ELU"
DEFAULT_K = 50
MAX_BANK = 10_000
SEED = 0


def l2_normalise(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)


def shrunk_covariance(x: torch.Tensor, shrinkage: float | None = None) -> torch.Tensor:
    """Covariance of centred rows `x` (N, D), shrunk towards mu*I (mu = mean variance): by the
    Ledoit-Wolf coefficient when `shrinkage` is None, else by that fraction; plus a 1e-6 ridge."""
    n, d = x.shape
    cov = x.T @ x / n
    mu = torch.trace(cov) / d
    if shrinkage is None:  # Ledoit & Wolf 2004, as sklearn.covariance.ledoit_wolf(assume_centered=True)
        delta = ((cov - mu * torch.eye(d, dtype=x.dtype)) ** 2).sum() / d
        beta = ((x.pow(2).sum(1) ** 2).sum() / n - (cov ** 2).sum()) / (n * d)
        shrinkage = 0.0 if delta == 0 else float(min(beta, delta) / delta)
    ridge = 1e-6 * (float(mu) if mu > 0 else 1.0)
    return (1 - shrinkage) * cov + (shrinkage * mu + ridge) * torch.eye(d, dtype=x.dtype)


class Detector:
    """`score` of every detector: pipeline.outputs.DETECTOR_SCORERS[name] on the fitted `state()`."""
    name = ""  # the detector's key in DETECTORS and DETECTOR_SCORERS

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(N,) float32 CPU scores, higher = more in-distribution."""
        params = {k: to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in self.state().items()}
        return torch.from_numpy(DETECTOR_SCORERS[self.name](to_numpy(features), params))


class KNN(Detector):
    """Minus the distance to the k-th nearest normalised train feature (module doc)."""
    name = "knn"

    def __init__(self, k: int | None = None, max_bank: int = MAX_BANK, seed: int = SEED):
        self.k, self.max_bank, self.seed = k, max_bank, seed
        self.bank = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor | None = None, weight=None, bias=None) -> "KNN":
        z = l2_normalise(features.double())
        if len(z) > self.max_bank:
            z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(self.seed))[: self.max_bank]]
        self.bank = z.float()
        if self.k is None:
            self.k = DEFAULT_K if len(z) >= 10 * DEFAULT_K else max(1, len(z) // 10)
        self.k = min(self.k, len(z))
        return self

    def state(self) -> dict:
        return {"k": self.k, "max_bank": self.max_bank, "seed": self.seed, "bank": self.bank}

    @classmethod
    def from_state(cls, state: dict) -> "KNN":
        det = cls(state["k"], state["max_bank"], state["seed"])
        det.bank = state["bank"]
        return det


class Mahalanobis(Detector):
    """Minus the smallest squared Mahalanobis distance to a class mean, tied covariance (module doc)."""
    name = "mahalanobis"

    def __init__(self, shrinkage: float | None = None):
        self.shrinkage = shrinkage
        self.classes = self.means = self.precision = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor, weight=None, bias=None) -> "Mahalanobis":
        z, labels = features.double(), torch.as_tensor(labels)
        self.classes = labels.unique()  # label indices present in the train split
        self.means = torch.stack([z[labels == c].mean(0) for c in self.classes])
        residual = z - self.means[torch.searchsorted(self.classes, labels)]
        self.precision = torch.linalg.inv(shrunk_covariance(residual, self.shrinkage))
        return self

    def state(self) -> dict:
        return {"shrinkage": self.shrinkage, "classes": self.classes, "means": self.means, "precision": self.precision}

    @classmethod
    def from_state(cls, state: dict) -> "Mahalanobis":
        det = cls(state["shrinkage"])
        det.classes, det.means, det.precision = state["classes"], state["means"], state["precision"]
        return det


class RMDS(Mahalanobis):
    """Relative Mahalanobis: class distance minus the background Gaussian's distance (module doc)."""
    name = "rmds"

    def fit(self, features: torch.Tensor, labels: torch.Tensor, weight=None, bias=None) -> "RMDS":
        super().fit(features, labels)
        z = features.double()
        self.background_mean = z.mean(0, keepdim=True)
        self.background_precision = torch.linalg.inv(shrunk_covariance(z - self.background_mean, self.shrinkage))
        return self

    def state(self) -> dict:
        return {**super().state(), "background_mean": self.background_mean,
                "background_precision": self.background_precision}

    @classmethod
    def from_state(cls, state: dict) -> "RMDS":
        det = super().from_state(state)
        det.background_mean, det.background_precision = state["background_mean"], state["background_precision"]
        return det


class ViM(Detector):
    """Energy minus alpha x the residual norm outside the train features' principal subspace (module doc)."""
    name = "vim"

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.weight = self.bias = self.origin = self.residual = self.alpha = None

    def fit(self, features: torch.Tensor, labels=None, weight=None, bias=None) -> "ViM":
        if weight is None or bias is None:
            raise ValueError("vim needs the heads' weight and bias")
        z, self.weight, self.bias = features.double(), weight.detach().double(), bias.detach().double()
        width = z.shape[1]
        self.dim = self.dim or min(max(width // 2, len(self.bias) + 1), width - 1)
        self.origin = -(torch.linalg.pinv(self.weight) @ self.bias)
        centred = z - self.origin
        _, vectors = torch.linalg.eigh(centred.T @ centred / len(z))  # ascending eigenvalues
        self.residual = vectors[:, : width - self.dim]  # the directions of the smallest variance
        train_logits = z @ self.weight.T + self.bias
        self.alpha = float(train_logits.max(1).values.mean() / self.residual_norm(z).mean().clamp(min=1e-12))
        return self

    def residual_norm(self, z: torch.Tensor) -> torch.Tensor:
        return ((z - self.origin) @ self.residual).norm(dim=1)

    def state(self) -> dict:
        return {"dim": self.dim, "weight": self.weight, "bias": self.bias, "origin": self.origin,
                "residual": self.residual, "alpha": self.alpha}

    @classmethod
    def from_state(cls, state: dict) -> "ViM":
        det = cls(state["dim"])
        for key in ("weight", "bias", "origin", "residual", "alpha"):
            setattr(det, key, state[key])
        return det


DETECTORS = {cls.name: cls for cls in (KNN, Mahalanobis, RMDS, ViM)}


def fit_all(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> dict:
    """Every detector of `DETECTORS`, fitted on these features (NaN rows, unreadable images, dropped)."""
    ok = ~torch.isnan(features).any(1)
    if not ok.any():
        raise ValueError("no train features to fit the OOD detectors on")
    return {name: cls().fit(features[ok], torch.as_tensor(labels)[ok], weight, bias)
            for name, cls in DETECTORS.items()}
