"""Which value of a headline table is bold: the best row only when it is better than every other
paradigm's row beyond chance.

Tables 1-2 (each task's accuracy and macro F1, per image set) and Table 4 (rejection AUROC per OOD
set and per near/far mean) compare the paradigms on the same images. For each column the row with
the best mean is bold only if the 95 % paired bootstrap interval (evaluation.stats) of its
difference to the best row of every other paradigm excludes 0 in its favour; otherwise nothing in
that column is bold. Rows of the same paradigm (a model's other task rules, the
scorers of one model) are not compared with each other: they are not the paradigms' question.
"""
from __future__ import annotations

import numpy as np

from evaluation.stats import accuracy_stat, f1_stat, paired_difference

TASK_STATS = {"accuracy": accuracy_stat, "f1_macro": f1_stat}


def best_if_significant(stat, rows: dict[str, tuple[str, list]], higher_is_better: bool = True):
    """rows: {row name: (paradigm, per-trial groups)}. The best row by mean observed `stat` if its
    paired interval against the best row of every other paradigm excludes 0 in its favour, else None;
    with the intervals, {other row: {value, lo, hi, trials}}."""
    rows = {k: v for k, v in rows.items() if v[1]}
    means = {k: float(np.nanmean([stat(t) for t in trials])) for k, (_, trials) in rows.items()}
    means = {k: m for k, m in means.items() if not np.isnan(m)}
    if len({rows[k][0] for k in means}) < 2:
        return None, {}
    sign = 1 if higher_is_better else -1
    best = max(means, key=lambda k: sign * means[k])
    rivals: dict[str, str] = {}
    for k in means:  # each other paradigm's best row
        p = rows[k][0]
        if p != rows[best][0] and (p not in rivals or sign * means[k] > sign * means[rivals[p]]):
            rivals[p] = k
    n = min(len(rows[best][1]), *(len(rows[k][1]) for k in rivals.values()))
    diffs = {k: paired_difference(stat, rows[best][1][:n], rows[k][1][:n]) for k in rivals.values()}
    won = all((d["lo"] > 0) if higher_is_better else (d["hi"] < 0) for d in diffs.values())
    return (best if won else None), diffs


def task_groups(results, run: str, task: str, image_set: str) -> list:
    """Per trial (sorted): [(label, prediction) per image] of `run` on `task`'s `image_set`."""
    out = []
    for trial in sorted(results.get(run, {})):
        o = results[run][trial][1].get("tasks", {}).get(task, {}).get(image_set)
        if o is not None:
            out.append([np.asarray(o)])
    return out


def rejection_groups(results, run: str, sets: list[str], scorer: str, default: str = "default") -> list:
    """Per trial (sorted): [test-split scores, scores of each OOD set in `sets`] by `scorer`
    (`default`: the scorer the trial chose)."""
    out = []
    for trial in sorted(results.get(run, {})):
        m, raw = results[run][trial]
        name = m["rejection"].get("default") if scorer == default else scorer
        pairs = [raw["rejection"].get(o, {}).get(name) for o in sets]
        if name and all(p is not None for p in pairs):
            out.append([np.asarray(pairs[0][0]), *[np.asarray(p[1]) for p in pairs]])
    return out


def calibration_groups(results, run: str, stage: str = "after") -> list:
    """Per trial (sorted): [(confidence, correct) per decision of `run` on the test split], `before`
    or `after` temperature scaling (evaluation/checkpoint.py)."""
    return [[np.c_[np.asarray(raw["calibration"][stage][0], float), np.asarray(raw["calibration"][stage][1], float)]]
            for _, raw in (results[run][t] for t in sorted(results.get(run, {})))]
