"""The paper's claims as rows, each judged from this run's numbers by a stated rule.

C1 the efficiency-centric model matches task-centric accuracy (C1-ext: on the external sets,
under shift); C2 it rejects irrelevant images
better than both baselines; C3 its top-2 captures both labels of multi-label images; C4 the
multi-task model is the weakest OOD detector; C5 the efficiency-centric model is well calibrated;
C6 one model serves T tasks at about 1/T of the cost.

Every comparison of C1-C5 is a paired bootstrap interval (evaluation.stats) over the test images
of the first trials paired with each other; C6's is the interval of the median of the per-round
cost ratio over interleaved timing rounds (evaluation.efficiency). The verdict is "holds", "does
not hold" or "inconclusive" by the rule in each row, never by hand.
"""
from __future__ import annotations

import numpy as np

from evaluation.significance import calibration_groups
from evaluation.stats import (accuracy_stat, auroc_stat, ece_if_calibrated, ece_stat, interval, mean_of_first,
                              median_interval, paired_difference)

MARGIN = 0.02  # "matches": not worse by more than 2 accuracy points
WELL_CALIBRATED = 0.05  # ECE
HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


def _trials(results, run) -> list:
    return [results[run][t] for t in sorted(results.get(run, {}))]


def _fmt(r: dict) -> str:
    return f"{r['value']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]"




def _rejection(results, run, ood: str) -> list:
    out = []
    for m, raw in _trials(results, run):
        id_s, ood_s = raw["rejection"][ood][m["rejection"]["paper_scorer"]]
        out.append([np.asarray(id_s), np.asarray(ood_s)])
    return out


def verdict(all_good: bool, any_bad: bool) -> str:
    return FAILS if any_bad else HOLDS if all_good else UNSURE




def c1_accuracy(results, spec, task_run, shifted: bool = False) -> dict:
    """C1 on the test split, or (`shifted`) on every external set of every task (C1-ext)."""
    diffs = {}
    for t in spec.tasks:
        for s in spec.external.get(t, {}) if shifted else ["test"]:
            a = [[np.asarray(raw["tasks"][t][s])] for _, raw in _trials(results, "uni")]
            b = [[np.asarray(raw["tasks"][t][s])] for _, raw in _trials(results, task_run(spec, t))]
            if a and b:
                diffs[f"{t} {s}" if shifted else t] = paired_difference(accuracy_stat, a, b)
    where = "external sets: weather, season, another camera" if shifted else "test split"
    return {"id": "C1-ext" if shifted else "C1",
            "claim": f"the efficiency-centric model matches task-centric accuracy ({where})",
            "paper": "defect Ext-Snow 0.691 v 0.622 (Table 1)" if shifted else "defect 0.930 v 0.917, dirt 0.937 v 0.962",
            "this run": "; ".join(f"{t} {_fmt(d)}" for t, d in diffs.items()) or "n/a",
            "verdict": verdict(bool(diffs) and all(d["lo"] >= -MARGIN for d in diffs.values()),
                               any(d["hi"] < -MARGIN for d in diffs.values())),
            "rule": f"accuracy difference uni - task per task{' and external set' if shifted else ''} (each model "
                    f"answering each task by its rule chosen on val, Table 1): holds if "
                    f"every interval's lower end >= -{MARGIN}, does not hold if any upper end < -{MARGIN}"}


def _ood_pairs(results, spec, better: str, others: list[str]) -> dict:
    out = {}
    for ood in spec.ood:
        for other in others:
            a, b = _rejection(results, better, ood), _rejection(results, other, ood)
            if a and b:
                out[f"{ood} v {other}"] = paired_difference(auroc_stat, a, b)
    return out


def c2_rejection(results, spec, task_run) -> dict:
    d = _ood_pairs(results, spec, "uni", ["multi", *[task_run(spec, t) for t in spec.tasks]])
    return {"id": "C2", "claim": "the efficiency-centric model rejects irrelevant images better than both baselines",
            "paper": "AUROC receipts/documents 0.958/0.971 v multi 0.604/0.577, task 0.884/0.853, 0.841/0.817",
            "this run": "; ".join(f"{k} {_fmt(v)}" for k, v in d.items()) or "n/a",
            "verdict": verdict(bool(d) and all(v["lo"] > 0 for v in d.values()), any(v["hi"] < 0 for v in d.values())),
            "rule": "AUROC difference uni - other (each one's paper scorer) per OOD set: holds if every interval "
                    "is above 0, does not hold if any is below 0"}


def c3_top2(results, spec) -> dict:
    rows = {}
    for name, mset in spec.multilabel.items():
        def both(run):
            ranked = (raw["multilabel"][name]["by_rule"]["plain"] for _, raw in _trials(results, run))
            return [[np.array([all(l in r[:2] for l in mset.labels) for r in rows], float)] for rows in ranked]
        if "uni" in results:
            rows[name] = (interval(mean_of_first, both("uni")),
                          paired_difference(mean_of_first, both("uni"), both("multi")) if "multi" in results else None)
    good = bool(rows) and all(u["lo"] >= 0.5 and (v is None or v["lo"] > 0) for u, v in rows.values())
    bad = any(u["hi"] < 0.5 or (v is not None and v["hi"] < 0) for u, v in rows.values())
    text = "; ".join(f"{n} {u['value']:.3f} [{u['lo']:.3f}, {u['hi']:.3f}]" + (f", v multi {_fmt(v)}" if v else "")
                     for n, (u, v) in rows.items())
    return {"id": "C3", "claim": "the efficiency-centric top-2 holds both labels of multi-label images",
            "paper": "shown qualitatively (Figures 6-7): both labels in the top-2, the multi-task model finds dirt rarely",
            "this run": text or "n/a", "verdict": verdict(good, bad),
            "rule": "share of images with both labels in the top-2: holds if its interval is above 0.5 and above "
                    "the multi-task model's (paired), does not hold if below 0.5 or below the multi-task model's"}


def c4_multi_weakest(results, spec, task_run) -> dict:
    d = _ood_pairs(results, spec, "multi", ["uni", *[task_run(spec, t) for t in spec.tasks]])
    return {"id": "C4", "claim": "the multi-task model is the weakest OOD detector",
            "paper": "0.604/0.577, below every other model",
            "this run": "; ".join(f"{k} {_fmt(v)}" for k, v in d.items()) or "n/a",
            "verdict": verdict(bool(d) and all(v["hi"] < 0 for v in d.values()), any(v["lo"] > 0 for v in d.values())),
            "rule": "AUROC difference multi - other per OOD set: holds if every interval is below 0, does not hold "
                    "if any is above 0"}




def c5_calibration(results) -> dict:
    """Judged on the efficiency-centric model as served: after its temperature scaling (fitted on
    val); the ECE before it is shown beside."""
    r = {s: interval(ece_stat, calibration_groups(results, "uni", s)) if results.get("uni") else None
         for s in ("before", "after")}
    temps = sorted({round(t, 2) for m, _ in results.get("uni", {}).values()
                    for t in m.get("calibration", {}).get("temperatures", {}).values()})
    after, before = r["after"], r["before"]
    floor = ece_if_calibrated(calibration_groups(results, "uni", "after")) if after else None
    return {"id": "C5", "claim": "the efficiency-centric model, temperature-scaled on val, is well calibrated",
            "paper": "calibrated well enough for top-n predictions (no figure given)",
            "this run": (f"ECE {_ece(after)} after temperature scaling (T = {', '.join(f'{t:g}' for t in temps)}; "
                         f"before: {_ece(before)}); a perfectly calibrated model would measure {floor['mean']:.3f} "
                         f"(95th percentile {floor['hi']:.3f}) on as many decisions, p = {floor['p']:.2f}")
            if after else "n/a",
            "verdict": verdict(after is not None and after["hi"] <= WELL_CALIBRATED,
                               after is not None and after["lo"] > WELL_CALIBRATED),
            "rule": f"ECE (15 bins) on the test split of the temperature-scaled model (one temperature per trial, "
                    f"fitted on val): holds if its interval is at or below {WELL_CALIBRATED}, does not hold if above"}


def _ece(r: dict) -> str:
    return f"{r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"


def c6_cost(efficiency_rows: dict, n_tasks: int) -> dict:
    """`efficiency_rows`: {'uni': ms per image per round, 'task': ms per image per round}, both from the
    same interleaved rounds (evaluation.efficiency.measure), so that round r of one pairs with round r
    of the other."""
    uni, task = (np.atleast_1d(np.asarray([] if efficiency_rows.get(k) is None else efficiency_rows[k], float))
                 for k in ("uni", "task"))
    n = min(len(uni), len(task))
    ratios = uni[:n] / task[:n] if n else np.empty(0)
    r = median_interval(ratios)
    bound = 1.5 / n_tasks
    text = (f"{np.median(uni):.2f} v {np.median(task):.2f} ms per image (medians); ratio {r['value']:.2f} "
            f"[{r['lo']:.2f}, {r['hi']:.2f}] over {n} interleaved rounds (1/T = {1 / n_tasks:.2f})") if n else "n/a"
    return {"id": "C6", "claim": f"one model serves the {n_tasks} tasks at about 1/{n_tasks} of the cost",
            "paper": "1 model, 1 OOD detector, 1 table instead of one per task",
            "this run": text, "verdict": cost_verdict(r, bound),
            "rule": f"wall time per image, uni over all task models, paired within each timing round: median of "
                    f"the per-round ratios with its 95 % order-statistic interval; holds if the interval is at "
                    f"most 1.5/T = {bound:.2f}, does not hold if it is at least 1"}


def cost_verdict(ratio: dict, bound: float) -> str:
    """C6's rule on the interval of the median ratio: holds if its upper end is at most `bound`, does
    not hold if its lower end is at least 1 (one model costs as much as all of them); otherwise (or
    with too few rounds for an interval) inconclusive."""
    lo, hi = ratio["lo"], ratio["hi"]
    return verdict(bool(np.isfinite(hi)) and hi <= bound, bool(np.isfinite(lo)) and lo >= 1.0)


def claims(results, spec, task_run, efficiency_rows: dict | None = None) -> list[dict]:
    rows = [c1_accuracy(results, spec, task_run), *([c1_accuracy(results, spec, task_run, shifted=True)]
                                                    if spec.external else []),
            c2_rejection(results, spec, task_run), c3_top2(results, spec),
            c4_multi_weakest(results, spec, task_run), c5_calibration(results)]
    if efficiency_rows is not None:
        rows.append(c6_cost(efficiency_rows, len(spec.tasks)))
    return rows


def markdown(rows: list[dict]) -> str:
    cols = ["id", "claim", "paper", "this run", "verdict", "rule"]
    lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)
