"""The robustness levers of the efficiency-centric model, each a paired difference against the main runs.

A lever is any `--variant` of the uni model (run/ablations.sh: `aug_trivialaugment`, `aug_augmix`,
`aug_shift`, `mix_cutmix`, ...: the same runs trained with other flags) and BN adapt (test-time:
the main runs' own models with their BatchNorm statistics re-estimated on each set's images,
models/adapt.py). For each, trial i against the main runs' trial i on the same images, replicates
pooled (evaluation.stats.paired_difference):

- chosen on: the task's answer (each checkpoint's rule, models/task_rules.py) on the val split's
  images of the task's two classes and on each ext_val set — the only columns a default may be
  chosen by;
- reported: the same on the test split and on each external set, the mean AUROC of the default
  OOD scorer over the near- and the far-OOD sets, and ECE after temperature scaling (lower is
  better); BN adapt changes neither the OOD filter nor the calibration as deployed, so those are
  blank for it.
"""
from __future__ import annotations

import numpy as np

from evaluation.paper_tables import ood_kinds
from evaluation.significance import calibration_groups, rejection_groups
from evaluation.stats import accuracy_stat, ece_stat, mean_auroc_stat, paired_difference
from evaluation.tables import IntervalTable

BN_ADAPT = "BN adapt (test-time)"


def _outcomes(results, key: str, task: str, image_set: str) -> list:
    """Per uni trial (sorted): [(label, answer) per image] under raw[key][task][image_set]."""
    trials = results.get("uni", {})
    out = []
    for t in sorted(trials):
        o = trials[t][1].get(key, {}).get(task, {}).get(image_set)
        if o is None:
            return []
        out.append([np.asarray(o)])
    return out


def _paired(stat, a: list, b: list) -> dict | None:
    n = min(len(a), len(b))
    return paired_difference(stat, a[:n], b[:n]) if n else None


def measures(spec) -> list[tuple[str, str, str, str]]:
    """(row name, raw key, task, set) of the task-answer rows: chosen-on rows first, then reported."""
    rows = []
    for t in spec.tasks:
        rows += [(f"{t}: {s} (chosen on)", "validation", t, s) for s in ["val", *spec.external_val.get(t, {})]]
    for t in spec.tasks:
        rows += [(f"{t}: {s}", "tasks", t, s) for s in ["test", *spec.external.get(t, {})]]
    return rows


def lever_table(main: dict, variants: dict[str, dict], spec) -> IntervalTable | None:
    """The table (rows: measures; columns: levers), or None without uni runs in `main`."""
    if "uni" not in main:
        return None
    levers = {BN_ADAPT: None, **{name: res for name, res in variants.items() if "uni" in res}}
    kinds = ood_kinds(spec) or ({"all": list(spec.ood)} if spec.ood else {})
    ood_rows = [f"{k}-OOD AUROC" for k in kinds]
    table = IntervalTable("Robustness levers of the efficiency-centric model: paired difference to the main runs",
                          list(levers), lower_is_better={"ECE"}, note=NOTE)
    cells: dict[str, dict[str, dict | None]] = {}
    for name, res in levers.items():
        for row, key, t, s in measures(spec):
            a = _outcomes(main, f"{key}_bn_adapt" if key == "validation" else "bn_adapt", t, s) if res is None \
                else _outcomes(res, key, t, s)
            cells.setdefault(row, {})[name] = _paired(accuracy_stat, a, _outcomes(main, key, t, s))
        if res is None:
            continue
        for k, sets in kinds.items():
            cells.setdefault(f"{k}-OOD AUROC", {})[name] = _paired(
                mean_auroc_stat, rejection_groups(res, "uni", sets, "default"), rejection_groups(main, "uni", sets, "default"))
        cells.setdefault("ECE", {})[name] = _paired(ece_stat, calibration_groups(res, "uni"), calibration_groups(main, "uni"))
    for row in [m[0] for m in measures(spec)] + ood_rows + ["ECE"]:
        table.add(row, {k: v for k, v in cells.get(row, {}).items() if v is not None})
    return table


NOTE = ("Each cell: lever minus main runs, trial i paired with trial i on the same images, 95 % interval over "
        "the pooled bootstrap replicates; bold where the interval excludes 0 on the better side. Task rows: "
        "accuracy of each checkpoint's task answer (its rule chosen on val, Table 1). '(chosen on)' rows are "
        "the val split and the ext_val sets, the only rows a default may be chosen by; the other rows are "
        "reported, never used to choose. OOD: the mean AUROC of each trial's default scorer over the near- and "
        "far-OOD sets; ECE: after temperature scaling. BN adapt re-estimates BatchNorm statistics on each set's "
        "own images at test time (models/adapt.py); it leaves the OOD filter and calibration as deployed, so "
        "those rows are blank for it.")
