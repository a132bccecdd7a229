"""A model's outputs -> answers, in numpy: label scores, rankings and OOD scores, the one place they
are computed. Serving (ONNX Runtime) calls it directly; models/paradigms.py, models/scores.py and
models/detectors.py wrap it for torch, so evaluation and serving give the same numbers.

Imports numpy and the standard library only: the serving worker has no torch.

Labels (`Heads`): the rules of one score per label and of the ranking rules (`RANKINGS`) are in
the module doc of models/paradigms.py; `Heads` holds a paradigm's heads and exclusive label pairs
(from `Paradigm.output_heads`, or from a bundle's bundle.json with `Heads.from_manifest`).

Calibration (`Heads.scale`): temperature scaling divides each head's logits by that head's
temperature (fitted on val by models/calibration.py, stored in the checkpoint and the bundle). It
is applied here only: label scores take `temperatures`, and `top_labels` ranks by the unscaled
scores and reports the scaled ones, so a temperature changes the probabilities a row carries and
never its labels (within a head the order is the same at any temperature; across the heads of a
multi-task model it could differ). The OOD scorers always see the unscaled logits.

OOD scores, one number per image, higher = more in-distribution. From the logits (`LOGIT_SCORERS`,
`f(logits, heads)`):
- max_logit:   max over the concatenated logits (the paper's detector, Hendrycks et al. [7]);
- max_softmax: max over the heads' own probabilities (sigmoid for a binary head, softmax for a
               softmax head): for one softmax head, the max softmax probability the authors' code used;
- energy:      logsumexp over the concatenated logits (negative free energy);
- kl_uniform:  sum over heads of KL(head distribution || uniform): the paper's multi-task score,
               defined for every paradigm (one softmax head: log K minus the entropy).
Without heads, the logits are one softmax head. `Paradigm.paper_scorer` names the paper's score of
each design. From the penultimate features (`DETECTOR_SCORERS`, `g(features, params)`): knn,
mahalanobis, rmds, vim, each scored with the parameters its torch `fit` found (`state()`, or a
bundle's `Bundle.detector(name)`); what each detector is and how it is fitted: models/detectors.py.

Dtypes follow the torch code: probabilities and logit scores in float32, kl_uniform and the
detectors in float64; every score is returned as float32 of shape (N,), N = 0 included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RANKINGS = ("plain", "coherent")
# How a head answers a binary task (models/task_rules.py chooses one per task on validation images;
# ties go to the first): `restricted` compares the two classes' logits (a softmax head over more
# classes than the task's two), `argmax` takes the head's own decision (the argmax over the whole
# softmax head; a binary head's logit > 0), `threshold` compares the task's margin (`task_margin`:
# the log-odds of the positive class between the two) with a threshold fitted on validation images.
TASK_RULES = ("restricted", "argmax", "threshold")
KINDS = ("softmax", "binary")
KNN_CHUNK = 1 << 22  # query x bank distances knn computes at a time (32 MiB of float64 per array)


# --- numerics ---------------------------------------------------------------------------------

def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    return np.minimum(z, 0) - np.log1p(np.exp(-np.abs(z)))


def logsumexp(z: np.ndarray) -> np.ndarray:
    """(N,) log sum exp over each row; -inf for a row of -inf."""
    m = z.max(1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(z - m).sum(1, keepdims=True)) + m)[:, 0]


def probabilities(kind: str, z: np.ndarray) -> np.ndarray:
    """sigmoid of a binary head's logit (N, 1); softmax over a softmax head's classes."""
    return sigmoid(z) if kind == "binary" else softmax(z)


def calibration_name(record: dict | None) -> str:
    """What a row records of the calibration behind its scores (a checkpoint's or bundle's
    `calibration`, models/calibration.py): 'temperature 1.37' (one head), 'temperature 1.37,0.92'
    (one per head, in head order), or 'none' (a bundle released before calibration existed)."""
    if not record:
        return "none"
    return "temperature " + ",".join(f"{float(t):.3g}" for t in record["temperatures"].values())


# --- labels -----------------------------------------------------------------------------------

def coherent_order(names: list[str], row: list[int], exclusive) -> list[int]:
    """Column indices `row` (best first) under the coherent rule: a label that a label kept above
    it excludes moves to the end (models/paradigms.py)."""
    kept, moved = [], []
    for j in row:
        clash = any(frozenset((names[j], names[i])) in exclusive for i in kept)
        (moved if clash else kept).append(j)
    return kept + moved


@dataclass(frozen=True)
class Heads:
    heads: tuple[tuple[str, str, tuple[str, ...]], ...]  # (name, kind, classes); binary: (negative, positive)
    exclusive: frozenset = frozenset()  # frozensets {a, b} of labels that cannot both be true

    def __post_init__(self):
        for name, kind, classes in self.heads:
            if kind not in KINDS or (kind == "binary" and len(classes) != 2) or not classes:
                raise ValueError(f"head '{name}': kind '{kind}' with classes {list(classes)} is not a softmax "
                                 f"head over its classes or a binary head over (negative, positive)")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Heads":
        """The heads of a bundle.json: paradigm.heads [[name, kind, classes]], top2.exclusive {task: [neg, pos]}."""
        heads = tuple((name, kind, tuple(classes)) for name, kind, classes in manifest["paradigm"]["heads"])
        pairs = manifest.get("top2", {}).get("exclusive", {})
        return cls(heads, frozenset(frozenset(pair) for pair in pairs.values()))

    @property
    def sizes(self) -> list[int]:
        return [1 if kind == "binary" else len(classes) for _, kind, classes in self.heads]

    @property
    def labels(self) -> list[str]:
        """The labels ranked (the columns of `label_scores`): each head's classes (a binary head's
        positive), then the binary heads' shared negative class when no head lists it."""
        names = []
        for _, kind, classes in self.heads:
            names += [classes[1]] if kind == "binary" else list(classes)
        negative = next((classes[0] for _, kind, classes in self.heads if kind == "binary"), None)
        return names + ([negative] if negative and negative not in names else [])

    def ordered(self, temperatures: dict[str, float]) -> tuple[float, ...]:
        """{head name: temperature} (a checkpoint's or bundle's calibration) in head order."""
        missing = [name for name, _, _ in self.heads if name not in temperatures]
        if missing:
            raise ValueError(f"calibration has no temperature for head(s) {missing}; it has {sorted(temperatures)}")
        return tuple(float(temperatures[name]) for name, _, _ in self.heads)

    def scale(self, logits: np.ndarray, temperatures=None) -> np.ndarray:
        """The logits with each head's block divided by its temperature (one per head, in head
        order; None: unscaled): the one place a temperature is applied (module doc)."""
        if temperatures is None:
            return np.asarray(logits)
        t = np.asarray(temperatures, np.float64)
        if t.shape != (len(self.heads),) or not (np.isfinite(t) & (t > 0)).all():
            raise ValueError(f"temperatures {t.tolist()}: need one positive finite value per head ({len(self.heads)})")
        z = np.asarray(logits)
        z = z if np.issubdtype(z.dtype, np.floating) else z.astype(np.float32)
        return z / np.repeat(t, self.sizes).astype(z.dtype)

    def split(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """The concatenated logits (N, C) cut into one block per head."""
        logits = np.asarray(logits)
        if logits.ndim != 2 or logits.shape[1] != sum(self.sizes):
            raise ValueError(f"logits of shape {logits.shape}; these heads need (N, {sum(self.sizes)})")
        return dict(zip((h[0] for h in self.heads), np.split(logits, np.cumsum(self.sizes)[:-1], axis=1)))

    def label_scores(self, logits: np.ndarray, temperatures=None) -> tuple[list[str], np.ndarray]:
        """(self.labels, one float32 score per label (N, K)); the shared negative scores the
        probability that no binary head fires (heads taken as independent). `temperatures`: `scale`."""
        cols, none_fires = [], np.ones((len(logits), 1), np.float32)
        logits = self.scale(np.asarray(logits, np.float32), temperatures)
        for (_, kind, _), z in zip(self.heads, self.split(logits).values()):
            p = probabilities(kind, z)
            if kind == "binary":
                none_fires = none_fires * (1 - p)
            cols.append(p)
        names = self.labels
        if len(names) > sum(c.shape[1] for c in cols):
            cols.append(none_fires)
        return names, np.concatenate(cols, 1)

    def top_labels(self, logits: np.ndarray, k: int = 2, rule: str = "plain",
                   temperatures=None) -> tuple[list[list[str]], np.ndarray]:
        """The k best labels per image under `rule` (RANKINGS) and their scores (N, min(k, K)):
        ranked by the unscaled scores, scored with `temperatures` (`scale`; module doc)."""
        if rule not in RANKINGS:
            raise ValueError(f"unknown ranking rule '{rule}'; choose one of {', '.join(RANKINGS)}")
        names, scores = self.label_scores(logits)
        order = np.argsort(-scores, axis=1, kind="stable")  # descending; ties keep the column order
        if rule == "coherent" and self.exclusive:
            order = np.array([coherent_order(names, row, self.exclusive) for row in order.tolist()],
                             dtype=np.int64).reshape(order.shape)
        idx = order[:, :k]
        if temperatures is not None:
            scores = self.label_scores(logits, temperatures)[1]
        return [[names[j] for j in row] for row in idx.tolist()], np.take_along_axis(scores, idx, 1)

    def rank_labels(self, logits: np.ndarray, rule: str = "plain") -> list[list[str]]:
        """Every label per image, best first, under `rule` (RANKINGS)."""
        return self.top_labels(logits, len(self.labels), rule)[0]

    def task_head(self, pair) -> tuple[str, str, tuple[str, ...]] | None:
        """The head that answers the binary task (negative, positive): the binary head of the
        positive class, else a softmax head holding both classes; None when there is none."""
        neg, pos = pair
        return next((h for h in self.heads if h[1] == "binary" and h[2][1] == pos), None) or next(
            (h for h in self.heads if h[1] == "softmax" and neg in h[2] and pos in h[2]), None)

    def task_rules(self, pair) -> tuple[str, ...]:
        """The rules (TASK_RULES) that give different answers to the task: all three for a softmax
        head over more classes than the task's two, else `argmax` and `threshold`."""
        head = self._task_head(pair)
        return TASK_RULES if head[1] == "softmax" and len(head[2]) > 2 else ("argmax", "threshold")

    def task_margin(self, logits: np.ndarray, pair) -> np.ndarray:
        """(N,) the task's log-odds of the positive class against the negative one: a binary head's
        logit, else the positive class's logit minus the negative's (the logit of p(positive) /
        (p(positive) + p(negative)) under the softmax). 0 is the `restricted` answer's boundary."""
        head = self._task_head(pair)
        z = self.split(np.asarray(logits))[head[0]]
        return z[:, 0] if head[1] == "binary" else z[:, head[2].index(pair[1])] - z[:, head[2].index(pair[0])]

    def task_positive(self, logits: np.ndarray, pair, rule: str = "argmax", threshold: float = 0.0) -> np.ndarray:
        """Bool (N,): does the model say the task's positive class, under `rule` (TASK_RULES;
        `threshold`: the fitted margin the `threshold` rule compares with)?"""
        if rule not in TASK_RULES:
            raise ValueError(f"unknown task rule '{rule}'; choose one of {', '.join(TASK_RULES)}")
        head = self._task_head(pair)
        if rule == "threshold":
            return self.task_margin(logits, pair) > threshold
        if head[1] == "binary" or rule == "restricted":
            return self.task_margin(logits, pair) > 0
        return self.split(np.asarray(logits))[head[0]].argmax(1) == head[2].index(pair[1])

    def _task_head(self, pair) -> tuple[str, str, tuple[str, ...]]:
        head = self.task_head(pair)
        if head is None:
            raise ValueError(f"no head answers task {tuple(pair)}: no binary head for '{pair[1]}' and no softmax "
                             f"head over both classes (heads: {[h[0] for h in self.heads]})")
        return head

    def blocks(self, logits: np.ndarray):
        """(kind, logits block) per head."""
        return zip((kind for _, kind, _ in self.heads), self.split(logits).values())


# --- OOD scores from the logits ---------------------------------------------------------------

def _blocks(logits: np.ndarray, heads: Heads | None):
    return [("softmax", logits)] if heads is None else heads.blocks(logits)


def max_logit(logits: np.ndarray, heads: Heads | None = None) -> np.ndarray:
    return np.asarray(logits, np.float32).max(1)


def max_softmax(logits: np.ndarray, heads: Heads | None = None) -> np.ndarray:
    z = np.asarray(logits, np.float32)
    return np.concatenate([probabilities(kind, b) for kind, b in _blocks(z, heads)], 1).max(1)


def energy(logits: np.ndarray, heads: Heads | None = None) -> np.ndarray:
    return logsumexp(np.asarray(logits, np.float32))


def kl_uniform(logits: np.ndarray, heads: Heads | None = None) -> np.ndarray:
    """Per image: sum over heads of KL(head distribution || uniform), in float64.

    Binary head: KL(Bernoulli(p) || Bernoulli(0.5)) = p log p + (1-p) log(1-p) + log 2;
    softmax head over K classes: sum_k q_k log q_k + log K. Log-probabilities come from
    log_sigmoid / log_softmax (never log of a rounded probability), and the sum runs over each
    image's heads, so the result is one score per image (the authors' code passed probabilities
    where log-probabilities belong and scored elements, not images). 0 for an all-uniform output.
    """
    z = np.asarray(logits, np.float64)
    total = np.zeros(len(z), np.float64)
    for kind, b in _blocks(z, heads):
        if kind == "binary":
            logp, log1mp = log_sigmoid(b[:, 0]), log_sigmoid(-b[:, 0])
            kl = np.exp(logp) * logp + np.exp(log1mp) * log1mp + math.log(2)
        else:
            logq = log_softmax(b)
            kl = (np.exp(logq) * logq).sum(1) + math.log(b.shape[1])
        total += np.maximum(kl, 0)
    return total.astype(np.float32)


# --- OOD scores from the features (the detectors of models/detectors.py) ----------------------

def l2_normalise(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def squared_mahalanobis(z: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N, C): (z - mean_c)^T precision (z - mean_c) for every row of z and every mean, clamped at 0."""
    zp = z @ precision
    return np.maximum((zp * z).sum(1, keepdims=True) - 2 * zp @ means.T + ((means @ precision) * means).sum(1), 0)


def knn(features: np.ndarray, params: dict) -> np.ndarray:
    """Minus the Euclidean distance of the normalised feature to its k-th nearest bank feature."""
    z = l2_normalise(np.asarray(features, np.float64))
    bank = np.asarray(params["bank"], np.float64)
    k, bank_sq = int(params["k"]), (bank ** 2).sum(1)
    kth = np.empty(len(z), np.float64)
    rows = max(1, KNN_CHUNK // max(1, len(bank)))
    for start in range(0, len(z), rows):
        q = z[start:start + rows]
        d2 = (q ** 2).sum(1, keepdims=True) + bank_sq - 2 * q @ bank.T
        kth[start:start + rows] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return -np.sqrt(np.maximum(kth, 0)).astype(np.float32)


def _class_distances(features: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(features, np.float64)
    return z, squared_mahalanobis(z, np.asarray(params["means"], np.float64),
                                  np.asarray(params["precision"], np.float64))


def mahalanobis(features: np.ndarray, params: dict) -> np.ndarray:
    """Minus the smallest squared Mahalanobis distance to a class mean (tied covariance)."""
    return -_class_distances(features, params)[1].min(1).astype(np.float32)


def rmds(features: np.ndarray, params: dict) -> np.ndarray:
    """Minus the smallest class distance relative to the background Gaussian's distance."""
    z, classes = _class_distances(features, params)
    background = squared_mahalanobis(z, np.asarray(params["background_mean"], np.float64),
                                     np.asarray(params["background_precision"], np.float64))
    return -(classes - background).min(1).astype(np.float32)


def vim(features: np.ndarray, params: dict) -> np.ndarray:
    """Energy of the logits recomputed from the features minus alpha x the residual norm."""
    z = np.asarray(features, np.float64)
    weight, bias = np.asarray(params["weight"], np.float64), np.asarray(params["bias"], np.float64)
    residual = (z - np.asarray(params["origin"], np.float64)) @ np.asarray(params["residual"], np.float64)
    score = logsumexp(z @ weight.T + bias) - float(params["alpha"]) * np.linalg.norm(residual, axis=1)
    return score.astype(np.float32)


LOGIT_SCORERS = {"max_logit": max_logit, "max_softmax": max_softmax, "energy": energy, "kl_uniform": kl_uniform}
DETECTOR_SCORERS = {"knn": knn, "mahalanobis": mahalanobis, "rmds": rmds, "vim": vim}
SCORER_NAMES = (*LOGIT_SCORERS, *DETECTOR_SCORERS)


def check_scorer(name: str) -> str:
    if name not in SCORER_NAMES:
        raise ValueError(f"unknown OOD score '{name}'; choose one of {', '.join(SCORER_NAMES)}")
    return name


def ood_score(name: str, logits: np.ndarray, features: np.ndarray, heads: Heads | None,
              detectors: dict[str, dict]) -> np.ndarray:
    """(N,) float32 scores of scorer `name`: a logit scorer, or a detector with its fitted params."""
    if name in LOGIT_SCORERS:
        return LOGIT_SCORERS[name](logits, heads)
    if check_scorer(name) not in detectors:
        raise ValueError(f"OOD score '{name}' needs its fitted detector; fitted: {', '.join(detectors) or 'none'}")
    return DETECTOR_SCORERS[name](features, detectors[name])
