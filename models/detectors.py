"""OOD detectors on the model's penultimate features, fitted once on a checkpoint's train split.

The features are the concat classifier's hidden layer after ELU, from the same forward pass as
the logits (`PMG.forward(x, features=True)`, why that layer: models/pmg.py). Every detector is a
value in `DETECTORS`: `fit(features, labels)`, `score(features) -> (N,)` (higher = more
in-distribution, as models.scores), and `state()` / `from_state()` for the detector file.
- knn:         Sun et al. 2022: minus the Euclidean distance of the L2-normalised feature to its
               k-th nearest L2-normalised train feature. k = 50, or a tenth of the bank when it
               holds under 500 features (at least 1); the bank is at most 10,000 train features
               (a seeded random subsample beyond that).
- mahalanobis: Lee et al. 2018: class means and one shared (tied) covariance; minus the smallest
               squared Mahalanobis distance to a class mean.
- rmds:        Ren et al. 2021, relative Mahalanobis: per class, that distance minus the distance
               under one background Gaussian fitted to all train features; minus the smallest.
Classes are the dataset classes of the training images (`Paradigm.classes`), also for multi-task
and task-centric models, not their heads. Covariances are Ledoit-Wolf shrunk towards a scaled
identity (the coefficient comes from the data: ~0 with many images, larger on tiny sets) plus a
1e-6 relative ridge, so a train split smaller than the feature width still gives an invertible
matrix. Everything is computed in float64 and stored as tensors and plain data.

Written here in plain torch rather than taken from pytorch-ood 0.4.0: its KNN needs scikit-learn
(not a serving dependency) and keeps a sklearn index that cannot be stored in a weights_only
file; its Mahalanobis divides no covariance by N and adds only a fixed 1e-6 ridge (near-singular
when a train split is narrower than the features) and asserts that every class index occurs; and
its detectors have no state to save, so the fitted tensors would be pulled out of them anyway.

The detector file `<ckpt>.detectors.pt` (read with weights_only=True) stores the content hash of
the checkpoint it belongs to: `load` refuses another checkpoint's file, naming both;
`fitted_for` refits when it is missing or stale. CLI:
    python -m models.detectors fit --checkpoint CKPT [--data DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from models.checkpoint import CheckpointError

FORMAT = 1
FEATURES = "concat classifier hidden layer after ELU"
DEFAULT_K = 50
MAX_BANK = 10_000
SEED = 0


class DetectorFileError(CheckpointError):
    """A detector file that does not belong to this checkpoint or cannot be read; names both files."""


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


def squared_mahalanobis(z: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, C): (z - mean_c)^T precision (z - mean_c) for every row of z and every mean."""
    zp = z @ precision
    return ((zp * z).sum(1, keepdim=True) - 2 * zp @ means.T + ((means @ precision) * means).sum(1)).clamp(min=0)


class KNN:
    """Minus the distance to the k-th nearest normalised train feature (module doc)."""

    def __init__(self, k: int | None = None, max_bank: int = MAX_BANK, seed: int = SEED):
        self.k, self.max_bank, self.seed = k, max_bank, seed
        self.bank = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> "KNN":
        z = l2_normalise(features.double())
        if len(z) > self.max_bank:
            z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(self.seed))[: self.max_bank]]
        self.bank = z.float()
        if self.k is None:
            self.k = DEFAULT_K if len(z) >= 10 * DEFAULT_K else max(1, len(z) // 10)
        self.k = min(self.k, len(z))
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        z, bank = l2_normalise(features.double()), self.bank.double()
        out = [torch.cdist(chunk, bank).kthvalue(self.k, dim=1).values for chunk in z.split(1024)]
        return -torch.cat(out).float() if out else torch.zeros(0)

    def state(self) -> dict:
        return {"k": self.k, "max_bank": self.max_bank, "seed": self.seed, "bank": self.bank}

    @classmethod
    def from_state(cls, state: dict) -> "KNN":
        det = cls(state["k"], state["max_bank"], state["seed"])
        det.bank = state["bank"]
        return det


class Mahalanobis:
    """Minus the smallest squared Mahalanobis distance to a class mean, tied covariance (module doc)."""

    def __init__(self, shrinkage: float | None = None):
        self.shrinkage = shrinkage
        self.classes = self.means = self.precision = None

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "Mahalanobis":
        z, labels = features.double(), torch.as_tensor(labels)
        self.classes = labels.unique()  # label indices present in the train split
        self.means = torch.stack([z[labels == c].mean(0) for c in self.classes])
        residual = z - self.means[torch.searchsorted(self.classes, labels)]
        self.precision = torch.linalg.inv(shrunk_covariance(residual, self.shrinkage))
        return self

    def class_distances(self, features: torch.Tensor) -> torch.Tensor:
        return squared_mahalanobis(features.double(), self.means, self.precision)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return -self.class_distances(features).min(1).values.float()

    def state(self) -> dict:
        return {"shrinkage": self.shrinkage, "classes": self.classes, "means": self.means, "precision": self.precision}

    @classmethod
    def from_state(cls, state: dict) -> "Mahalanobis":
        det = cls(state["shrinkage"])
        det.classes, det.means, det.precision = state["classes"], state["means"], state["precision"]
        return det


class RMDS(Mahalanobis):
    """Relative Mahalanobis: class distance minus the background Gaussian's distance (module doc)."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "RMDS":
        super().fit(features, labels)
        z = features.double()
        self.background_mean = z.mean(0, keepdim=True)
        self.background_precision = torch.linalg.inv(shrunk_covariance(z - self.background_mean, self.shrinkage))
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        background = squared_mahalanobis(features.double(), self.background_mean, self.background_precision)
        return -(self.class_distances(features) - background).min(1).values.float()

    def state(self) -> dict:
        return {**super().state(), "background_mean": self.background_mean,
                "background_precision": self.background_precision}

    @classmethod
    def from_state(cls, state: dict) -> "RMDS":
        det = super().from_state(state)
        det.background_mean, det.background_precision = state["background_mean"], state["background_precision"]
        return det


DETECTORS = {"knn": KNN, "mahalanobis": Mahalanobis, "rmds": RMDS}


def fit_all(features: torch.Tensor, labels: torch.Tensor) -> dict:
    """Every detector of `DETECTORS`, fitted on these features (NaN rows, unreadable images, dropped)."""
    ok = ~torch.isnan(features).any(1)
    if not ok.any():
        raise ValueError("no train features to fit the OOD detectors on")
    return {name: cls().fit(features[ok], torch.as_tensor(labels)[ok]) for name, cls in DETECTORS.items()}


def all_detector_scores(detectors: dict, features: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: det.score(features) for name, det in detectors.items()}


# --- the detector file ------------------------------------------------------------------------

def detector_file(ckpt_path: str | Path) -> Path:
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(ckpt_path.name + ".detectors.pt")


def checkpoint_hash(ckpt_path: str | Path) -> str:
    from data.images import content_hash
    return content_hash(ckpt_path)


def save(ckpt_path: str | Path, detectors: dict, meta: dict, ckpt_hash: str | None = None) -> Path:
    """Write `<ckpt>.detectors.pt` atomically, keyed by the checkpoint's content hash."""
    file = detector_file(ckpt_path)
    state = {"format": FORMAT, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt_hash or checkpoint_hash(ckpt_path),
             "features": FEATURES, **meta, "detectors": {n: d.state() for n, d in detectors.items()}}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def load(ckpt_path: str | Path, ckpt_hash: str | None = None) -> dict:
    """The fitted detectors of this checkpoint; DetectorFileError (naming both files) when the file
    is missing, unreadable, of another format or fitted for another checkpoint."""
    from utils import read_torch_file
    file = detector_file(ckpt_path)
    fix = f"refit them: python -m models.detectors fit --checkpoint {ckpt_path}"
    state = read_torch_file(file, DetectorFileError, f"OOD detector file of {ckpt_path} ({fix})")
    if not isinstance(state, dict) or state.get("format") != FORMAT or set(state.get("detectors") or {}) != set(DETECTORS):
        raise DetectorFileError(f"{file}: not a detector file of format {FORMAT} with {', '.join(DETECTORS)}; {fix}")
    actual = ckpt_hash or checkpoint_hash(ckpt_path)
    if state.get("checkpoint_sha256") != actual:
        raise DetectorFileError(f"{file}: fitted for a checkpoint with content hash "
                                f"{str(state.get('checkpoint_sha256'))[:12]}, but {ckpt_path} has {actual[:12]} "
                                f"(the checkpoint changed or the file was copied); {fix}")
    return {n: DETECTORS[n].from_state(s) for n, s in state["detectors"].items()}


def fit_checkpoint(ckpt, spec, *, batch_size: int = 32, device="cpu", progress: bool = True, workers: int = 0,
                   extract=None, ckpt_hash: str | None = None) -> dict:
    """Fit every detector on the train split of `spec` (the checkpoint's classes, its eval transform)
    and write the detector file. `extract(items) -> (logits, features)` replaces the default
    models.inference.predict_features (evaluation passes its cache)."""
    from models.inference import predict_features
    classes = list(ckpt.paradigm.classes)
    items = spec.split_samples("train", classes)
    if extract is None:
        _, feats = predict_features(ckpt.model, items, ckpt.transform(), batch_size, device,
                                    desc="train features", progress=progress, workers=workers)
    else:
        _, feats = extract(items)
    detectors = fit_all(feats, torch.tensor([classes.index(c) for _, c in items]))
    save(ckpt.path, detectors, {"data": str(spec.root), "classes": classes, "n_train": len(items)}, ckpt_hash)
    return detectors


def fitted_for(ckpt, spec, **kwargs) -> dict:
    """The checkpoint's detectors: from its file when that is current, else fitted and written."""
    ckpt_hash = checkpoint_hash(ckpt.path)
    if detector_file(ckpt.path).is_file():
        try:
            return load(ckpt.path, ckpt_hash)
        except DetectorFileError as e:
            print(f"warning: {str(e).split('; refit')[0]}; refitting", file=sys.stderr)
    return fit_checkpoint(ckpt, spec, ckpt_hash=ckpt_hash, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.detectors", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit every detector on the train split; write <ckpt>.detectors.pt")
    fit.add_argument("--checkpoint", required=True, help="a train.py checkpoint (best.pt)")
    fit.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    fit.add_argument("--device", default="cpu")
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--workers", type=int, default=0)
    fit.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from data.spec import SpecError, load_spec
    from models import checkpoint as checkpoints
    try:
        data = args.data or checkpoints.read(args.checkpoint)["args"]["data"]
        spec = load_spec(data)
        ckpt = checkpoints.load(args.checkpoint, spec, args.device)
        detectors = fit_checkpoint(ckpt, spec, batch_size=args.batch_size, device=args.device,
                                   progress=not args.no_progress, workers=args.workers)
    except (SpecError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {detector_file(args.checkpoint)} ({', '.join(detectors)} on {spec.root} train)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
