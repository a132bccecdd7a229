"""How a model answers each binary task (pipeline.outputs.TASK_RULES), chosen on validation images only.

A softmax head over more classes than a task's two can answer the task two ways: `argmax` (the
positive class wins over every class) or `restricted` (the positive class beats the negative one).
They differ only on an image of the task that the head puts in a third class, which is what a shift
does: `argmax` calls every such image negative, `restricted` asks which of the task's two classes
it is nearer. Neither is right more often in general, so which rule serves is a decision taken
like every other default: on validation data, never on the reported sets.

For each task the rules that answer differently on this model (`Heads.task_rules`) are scored on
the val split's images of the task's two classes and on each of the task's `ext_val` sets (shifted
validation images generated beside the reported external sets, when the spec has them); the rule
with the highest mean accuracy over these sets wins, ties going to the first of TASK_RULES
(`restricted`: it treats the two classes alike).

The record per task (`choose`):
    {classes: [negative, positive], rule, accuracy: {rule: mean accuracy over the sets},
     sets: {set name: images}}
Evaluation stores it under `tasks.<task>.rule_choice` and answers every task by its rule; the
release stores them in bundle.json's `tasks`, and the pipeline answers each task by it.
"""
from __future__ import annotations

import numpy as np

from pipeline.outputs import TASK_RULES, Heads


def outcomes(heads: Heads, pair, sets: dict[str, tuple[np.ndarray, list[str]]], rule: str) -> dict[str, np.ndarray]:
    """{set name: per image (label, answer) as 0/1 ints (N, 2)} of the task's answer by `rule` on the
    images of its two classes in `sets` {name: (logits (N, C), class labels)}; a set with none left out."""
    out = {}
    for name, (logits, labels) in sets.items():
        keep = np.array([c in pair for c in labels], bool)
        if keep.any():
            y = np.array([c == pair[1] for c, k in zip(labels, keep) if k], int)
            out[name] = np.c_[y, heads.task_positive(np.asarray(logits)[keep], pair, rule).astype(int)]
    return out


def choose(heads: Heads, pair, sets: dict[str, tuple[np.ndarray, list[str]]]) -> dict:
    """The task's record (module doc) from `sets` {name: (logits (N, C), class labels)}; images of
    other classes are left out, and a set with none of the pair's images does not count."""
    from sklearn.metrics import accuracy_score
    per_rule = {r: outcomes(heads, pair, sets, r) for r in heads.task_rules(pair)}
    mean = {r: float(np.mean([accuracy_score(o[:, 0], o[:, 1]) for o in sets_.values()])) if sets_ else float("nan")
            for r, sets_ in per_rule.items()}
    ranked = sorted(mean, key=lambda r: (-np.nan_to_num(mean[r], nan=-1.0), TASK_RULES.index(r)))
    counts = {name: len(o) for name, o in next(iter(per_rule.values())).items()}
    return {"classes": list(pair), "rule": ranked[0], "accuracy": mean, "sets": counts}


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
    """'defect: restricted (val 0.95 v argmax 0.93); dirt: argmax' for a note or a log line."""
    parts = []
    for task, r in records.items():
        others = [f"{k} {v:.3f}" for k, v in r["accuracy"].items() if k != r["rule"]]
        parts.append(f"{task}: {r['rule']}" + (f" ({r['accuracy'][r['rule']]:.3f} v {', '.join(others)} on "
                                               f"{', '.join(r['sets'])})" if others else ""))
    return "; ".join(parts)
