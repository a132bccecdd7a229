"""How a model answers each binary task (pipeline.outputs.TASK_RULES), chosen on validation images only.

A head can answer a task by its own decision (`argmax`: the argmax over a softmax head, a binary
head's logit > 0), and a softmax head over more classes than the task's two also by `restricted`
(the positive class beats the negative one). They differ only on an image of the task that the head
puts in a third class, which is what a shift does: `argmax` calls every such image negative,
`restricted` asks which of the task's two classes it is nearer. Every head can also answer by
`threshold`: the task's margin (`Heads.task_margin`, the log-odds of positive against negative)
above a threshold fitted on the validation images, which moves the boundary where a shift has
moved the margins (a rainy photo's defect looks less like one). No rule is right more often in
general, so which rule serves is a decision taken like every other default: on validation data,
never on the reported sets, and for every model alike.

For each task the rules that answer differently on this model (`Heads.task_rules`) are scored on
the val split's images of the task's two classes and on each of the task's `ext_val` sets (shifted
validation images generated beside the reported external sets, when the spec has them): a rule's
score is its mean accuracy over these sets. The threshold (`fit_threshold`) minimises the mean over
the sets of the logistic loss of the margin shifted by it (one parameter, like the intercept of a
Platt fit; each set weighs alike, so a shift counts as much as the unshifted split); as it is
fitted on these images, its score is cross-validated (`FOLDS` folds across every set's images:
fitted on the others, scored on each). The rule with the highest score wins, ties going to the
first of TASK_RULES (`restricted`: it treats the two classes alike; `threshold` last: it must
earn its fitted parameter).

The record per task (`choose`):
    {classes: [negative, positive], rule, threshold: the fitted margin (used by rule `threshold`),
     accuracy: {rule: score}, sets: {set name: images}}
Evaluation stores it under `tasks.<task>.rule_choice` and answers every task by its rule; the
release stores them in bundle.json's `tasks`, and the pipeline answers each task by it.
"""
from __future__ import annotations

import numpy as np

from pipeline.outputs import TASK_RULES, Heads


FOLDS = 5


def outcomes(heads: Heads, pair, sets: dict[str, tuple[np.ndarray, list[str]]], rule: str,
             threshold: float = 0.0) -> dict[str, np.ndarray]:
    """{set name: per image (label, answer) as 0/1 ints (N, 2)} of the task's answer by `rule` on the
    images of its two classes in `sets` {name: (logits (N, C), class labels)}; a set with none left out."""
    return {name: np.c_[y, heads.task_positive(z, pair, rule, threshold).astype(int)]
            for name, (z, y) in _task_images(pair, sets).items()}


def _task_images(pair, sets) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set name: (logits, labels 0/1)} of the images of the task's two classes; a set with none left out."""
    out = {}
    for name, (logits, labels) in sets.items():
        keep = np.array([c in pair for c in labels], bool)
        if keep.any():
            out[name] = (np.asarray(logits)[keep], np.array([c == pair[1] for c, k in zip(labels, keep) if k], int))
    return out


def fit_threshold(margins: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """The threshold t minimising the mean over the sets of each set's mean logistic loss of
    (margin - t) against its 0/1 labels (module doc); 0 without images of both classes."""
    from scipy.optimize import minimize_scalar
    m = [np.asarray(x, float) for x in margins]
    y = [2 * np.asarray(x, float) - 1 for x in labels]
    every = np.concatenate(m) if m else np.zeros(0)
    both = np.concatenate(y) if y else np.zeros(0)
    if not ((both > 0).any() and (both < 0).any()):
        return 0.0

    def loss(t):
        return float(np.mean([np.mean(np.logaddexp(0.0, -yi * (mi - t))) for mi, yi in zip(m, y) if len(mi)]))

    return float(minimize_scalar(loss, bounds=(every.min(), every.max()), method="bounded").x)


def cross_validated(margins: list[np.ndarray], labels: list[np.ndarray], folds: int = FOLDS) -> float:
    """Mean over the sets of the accuracy of `threshold` answers, each image answered by the
    threshold fitted without its fold (image i of a set is in fold i % folds)."""
    fold = [np.arange(len(x)) % folds for x in margins]
    said = [np.zeros(len(x), int) for x in margins]
    for f in range(folds):
        t = fit_threshold([m[k != f] for m, k in zip(margins, fold)], [y[k != f] for y, k in zip(labels, fold)])
        for s, m, k in zip(said, margins, fold):
            s[k == f] = m[k == f] > t
    return float(np.mean([np.mean(s == y) for s, y in zip(said, labels)]))


def choose(heads: Heads, pair, sets: dict[str, tuple[np.ndarray, list[str]]]) -> dict:
    """The task's record (module doc) from `sets` {name: (logits (N, C), class labels)}; images of
    other classes are left out, and a set with none of the pair's images does not count."""
    from sklearn.metrics import accuracy_score
    found = _task_images(pair, sets)
    margins = [heads.task_margin(z, pair) for z, _ in found.values()]
    labels = [y for _, y in found.values()]
    threshold = fit_threshold(margins, labels)
    mean = {}
    for r in heads.task_rules(pair):
        if not found:
            mean[r] = float("nan")
        elif r == "threshold":
            mean[r] = cross_validated(margins, labels)
        else:
            mean[r] = float(np.mean([accuracy_score(y, heads.task_positive(z, pair, r)) for z, y in found.values()]))
    return {"classes": list(pair), "rule": best_rule(mean), "threshold": threshold, "accuracy": mean,
            "sets": {name: len(y) for name, y in zip(found, labels)}}


def best_rule(scores: dict[str, float]) -> str:
    """The rule with the highest score; equal scores (to 1e-9: the rules' means add the same
    accuracies in different orders) go to the first of TASK_RULES; NaN ranks last."""
    return min(scores, key=lambda r: (-round(float(np.nan_to_num(scores[r], nan=-1.0)), 9), TASK_RULES.index(r)))


def validation_items(ckpt, spec, task: str) -> dict[str, tuple[str, list]]:
    """{set name: (the name its outputs are extracted under, (path, class) items)} of the images the
    rule of `task` is chosen on: the val split (as calibration reads it) and the task's ext_val sets."""
    from models.calibration import SPLIT
    out = {"val": (SPLIT, spec.split_samples(SPLIT, list(ckpt.paradigm.classes)))}
    pair = list(spec.tasks[task])
    for name, folder in spec.external_val.get(task, {}).items():
        out[name] = (f"ext_val/{task}/{name}", spec.samples(folder, pair))
    return out


def validation_sets(items: dict[str, tuple[str, list]], extract) -> dict[str, tuple[np.ndarray, list[str]]]:
    """{set name: (logits of its readable images, their classes)} through `extract(name, items) ->
    (logits, features)` (evaluation's cache, a release's memo)."""
    from models.inference import valid_rows
    from utils import to_numpy
    out = {}
    for name, (key, its) in items.items():
        logits, _ = extract(key, its)
        ok = valid_rows(logits)
        out[name] = (to_numpy(logits[ok]), [c for (_, c), k in zip(its, ok.tolist()) if k])
    return out


def of_checkpoint(ckpt, spec, extract) -> dict[str, dict]:
    """{task: record} for every task the checkpoint's model has a head for (module doc)."""
    heads = ckpt.paradigm.output_heads
    return {t: choose(heads, spec.tasks[t], validation_sets(validation_items(ckpt, spec, t), extract))
            for t in ckpt.paradigm.tasks(spec.tasks) if heads.task_head(spec.tasks[t]) is not None}


def describe(records: dict[str, dict]) -> str:
    """'defect: threshold -2.10 (0.95 v restricted 0.93, argmax 0.90 on val, ext_val_rain); dirt: ...' for a
    note or a log line."""
    parts = []
    for task, r in records.items():
        others = [f"{k} {v:.3f}" for k, v in r["accuracy"].items() if k != r["rule"]]
        rule = r["rule"] + (f" {r['threshold']:+.2f}" if r["rule"] == "threshold" else "")
        parts.append(f"{task}: {rule}" + (f" ({r['accuracy'][r['rule']]:.3f} v {', '.join(others)} on "
                                               f"{', '.join(r['sets'])})" if others else ""))
    return "; ".join(parts)
