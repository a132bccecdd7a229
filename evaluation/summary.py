"""Each run's test and OOD figures with 95 % intervals: `evaluate.py report` writes them to
RESULTS/summary.json, and a release's model card carries them (`python -m models.release --report
RESULTS`, models/card.py reads the file).

Per run: the content hash of each trial's checkpoint (a release finds its trial by it), each
trial's default OOD scorer, and figures, each the mean over the trials with the 95 % bootstrap
interval over the test images, trials pooled (evaluation/stats.py `interval`):
- accuracy and ECE (15 bins) of the run's own decisions on the test split (Table 6), the ECE after
  the checkpoint's temperature scaling (fitted on val: the scores a release serves) and before it;
- each task's accuracy on the test split and on the task's external sets (Table 1);
- the rejection AUROC of each trial's default scorer against each OOD set, and its mean over the
  OOD sets (Table 4).
"""
from __future__ import annotations

from pathlib import Path

from data.spec import Spec
from evaluation.checkpoint import to_json
from evaluation.significance import calibration_groups, rejection_groups, task_groups
from evaluation.stats import accuracy_stat, auroc_stat, ece_stat, interval, mean_auroc_stat, mean_of_first
from models.card import SUMMARY

INTERVAL = "95 % bootstrap interval over the test images (trials pooled)"
OOD_AUROC = "OOD AUROC, default scorer"
ECE_AFTER = "ECE (15 bins), temperature-scaled on val"
ECE_BEFORE = "ECE (15 bins), before calibration"


def figure(name: str, image_set: str, stat, groups: list) -> dict | None:
    """{figure, set, value, lo, hi, trials}: `stat` over the trials' groups; None without any."""
    if not groups:
        return None
    r = interval(stat, groups)
    return {"figure": name, "set": image_set, "value": r["value"], "lo": r["lo"], "hi": r["hi"], "trials": r["trials"]}


def run_summary(results, run: str, spec: Spec) -> dict:
    trials = {t: results[run][t][0] for t in sorted(results[run])}
    calibration = calibration_groups(results, run)
    rows = [figure("accuracy", "test", mean_of_first, [[g[0][:, 1]] for g in calibration]),
            figure(ECE_AFTER, "test", ece_stat, calibration),
            figure(ECE_BEFORE, "test", ece_stat, calibration_groups(results, run, "before"))]
    tasks = dict.fromkeys(t for m in trials.values() for t in m["tasks"])
    rows += [figure(f"accuracy, task {t}", s, accuracy_stat, task_groups(results, run, t, s))
             for t in tasks for s in ("test", *spec.external.get(t, {}))]
    rows += [figure(OOD_AUROC, o, auroc_stat, rejection_groups(results, run, [o], "default")) for o in spec.ood]
    if len(spec.ood) > 1:
        rows.append(figure(OOD_AUROC, "mean over the OOD sets", mean_auroc_stat,
                           rejection_groups(results, run, list(spec.ood), "default")))
    return {"trials": {t: m.get("checkpoint_sha256") for t, m in trials.items()},
            "default_scorers": {t: m["rejection"].get("default") for t, m in trials.items()},
            "figures": [r for r in rows if r is not None]}


def write_summary(results, spec: Spec, out: Path) -> Path:
    """RESULTS/summary.json (module doc) for every run of `results`."""
    file = Path(out) / SUMMARY
    file.write_text(to_json({"dataset": spec.name, "interval": INTERVAL,
                             "runs": {run: run_summary(results, run, spec) for run in results}}))
    return file
