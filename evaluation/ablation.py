"""Ablation tables: the report's own runs against the same runs trained with other flags.

`evaluate.py report --variant NAME=DIR` (repeatable) evaluates DIR/<run>/<trial>/best.pt like the
main artifacts and, for every run found in both, adds two tables: each task's test accuracy and
macro F1, then OOD rejection by the default scorer (mean over near- and far-OOD sets), ECE and the
top-2 of each multi-label set — mean ± std over trials, the main runs first. The flags that tell the
variants apart (read from their checkpoints) are listed in the note, so a table never hides what
changed. A variant that holds every task-centric model and no efficiency-centric one (e.g. the
equal-compute `--budget steps` runs of run/ablations.sh) also gets Tables 1-2 again, with its
task-centric models in place of the main ones: the comparison under that protocol.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.paper_tables import (DEFAULT, TASK_METRICS, display, ood_kinds, rejection_values, run_paper_scorer,
                               table_task_accuracy, task_run, values)
from evaluation.tables import ReportTable
from utils import read_summary

FLAGS = ("method", "budget", "mix", "mix_prob", "augment", "zero_grad", "bn_stats", "jigsaw", "epochs_run",
         "budget_batches")


def flags_of(trials: dict) -> str:
    m = next(iter(trials.values()))[0]
    flags = {"backbone": m.get("backbone"), "crop": m.get("crop"), **(m.get("protocol") or {})}
    return ", ".join(f"{k}={flags[k]}" for k in ("backbone", "crop", *FLAGS) if flags.get(k) is not None)


def n_trials(n: int) -> str:
    return f"{n} trial" if n == 1 else f"{n} trials"


def ablation_tables(main: dict, variants: dict[str, dict], spec, main_name: str = "main") -> list[tuple[str, ReportTable]]:
    """[(CSV name, table)] for every run trained both in `main` and in at least one variant, then
    Tables 1-2 under each task-centric-only variant's protocol (protocol_tables)."""
    out = protocol_tables(main, variants, spec)
    for run in main:
        arms = {main_name: main, **{name: res for name, res in variants.items() if run in res}}
        if len(arms) < 2:
            continue
        note = "Rows: " + "; ".join(f"{name}: {flags_of(res[run])} ({n_trials(len(res[run]))})"
                                    for name, res in arms.items()) + "."
        out.append((f"ablation_{run}_tasks", tasks_table(run, arms, spec, note)))
        out.append((f"ablation_{run}_ood_top2", ood_top2_table(run, arms, spec, note)))
    return out


def protocol_tables(main: dict, variants: dict[str, dict], spec) -> list[tuple[str, ReportTable]]:
    """Tables 1-2 with the task-centric models of each variant that trained all of them (and no
    efficiency-centric model), the other paradigms from `main`; the title names the protocols."""
    runs = [task_run(spec, t) for t in spec.tasks]
    out = []
    for name, res in variants.items():
        if not runs or "uni" in res or not all(r in res for r in runs):
            continue
        merged = {**main, **{r: res[r] for r in runs}}
        for metric, (key, _) in TASK_METRICS.items():
            table = table_task_accuracy(merged, spec, metric)
            table.title += f" — task-centric models of variant '{name}'"
            table.note = (f"Task-centric rows: variant '{name}' ({flags_of(res[runs[0]])}); other rows: the main runs "
                          f"({flags_of(main['uni']) if 'uni' in main else 'none'}). " + table.note)
            out.append((f"{key}_{name}", table))
    return out


def training(res: dict, run: str) -> dict[str, list[float]]:
    """Per trial, from the run folder's summary.csv: training images/s and training seconds."""
    speed, seconds = [], []
    for m, _ in res[run].values():
        rows = read_summary(Path(m["checkpoint"]).parent)
        secs = sum(float(r["train_seconds"]) for r in rows)
        seconds.append(secs if rows else float("nan"))
        speed.append(sum(int(r["train_images"]) for r in rows) / secs if rows and secs > 0 else float("nan"))
    return {"train images/s": speed, "train s": seconds}


def external_accuracy(res: dict, run: str, task: str, sets: list[str]) -> list[float]:
    """Per trial: the task's accuracy averaged over its external-validation sets."""
    per_set = [values(res, run, "tasks", task, "sets", s, "accuracy") for s in sets]
    return [float(np.mean(v)) for v in zip(*per_set)] if per_set else []


def tasks_table(run: str, arms: dict, spec, note: str) -> ReportTable:
    answered = {t for res in arms.values() for m, _ in res[run].values() for t in m["tasks"]}
    tasks = [t for t in spec.tasks if t in answered]
    ext = {t: list(spec.external.get(t, {})) for t in tasks}
    table = ReportTable(f"Ablation, {display(run)}: accuracy and macro F1 per task, training cost",
                        [f"{t} {k}" for t in tasks for k in ("acc", "F1", *(["ext acc"] if ext[t] else []))]
                        + ["train images/s", "train s"],
                        no_bold={"train images/s", "train s"}, column_digits={"train images/s": 1, "train s": 0},
                        note=note + " acc, F1: the test split; ext acc: the mean accuracy over the task's "
                                    "external-validation sets. Training cost from each run's summary.csv on the "
                                    "machine that trained it.")
    for name, res in arms.items():
        cells = {f"{t} {k}": values(res, run, "tasks", t, "sets", "test", metric)
                 for t in tasks for k, metric in (("acc", "accuracy"), ("F1", "f1_macro"))}
        cells |= {f"{t} ext acc": external_accuracy(res, run, t, ext[t]) for t in tasks if ext[t]}
        table.add(name, {**cells, **training(res, run)})
    return table


def ood_top2_table(run: str, arms: dict, spec, note: str) -> ReportTable:
    kinds = ood_kinds(spec) or ({"all": list(spec.ood)} if spec.ood else {})
    ml = {name: list(m.labels) for name, m in spec.multilabel.items()}
    columns = ([f"{k}-OOD AUROC" for k in kinds] + [f"{k}-OOD FPR@95" for k in kinds]
               + [f"{k}-OOD AUROC (paper score)" for k in kinds] + ["ECE"])
    for name, labels in ml.items():
        columns += [f"{name}: all in top-2", f"{name}: all in coherent top-2", *[f"{name}: {l} top-1" for l in labels],
                    *[f"{name}: {l} in top-2" for l in labels]]
    table = ReportTable(f"Ablation, {display(run)}: OOD rejection (default scorer), calibration, top-2", columns,
                        lower_is_better={"ECE", *[f"{k}-OOD FPR@95" for k in kinds]},
                        note=note + " OOD: each trial's default scorer (chosen on val + ood_val), averaged over "
                                    "the sets of each kind; '(paper score)': the paradigm's own score (max logit "
                                    "for the efficiency-centric model); 'coherent top-2': Table 5's rule; ECE: "
                                    "after each checkpoint's temperature scaling (fitted on val), Table 6's 'after'.")
    for name, res in arms.items():
        cells = {}
        for k, sets in kinds.items():
            cells[f"{k}-OOD AUROC"] = rejection_values(res, run, sets, DEFAULT, "auroc")
            cells[f"{k}-OOD FPR@95"] = rejection_values(res, run, sets, DEFAULT, "fpr95")
            cells[f"{k}-OOD AUROC (paper score)"] = rejection_values(res, run, sets, run_paper_scorer(res, run), "auroc")
        cells["ECE"] = values(res, run, "calibration", "after", "ece")
        for set_name, labels in ml.items():
            plain, coherent = (("multilabel", set_name, "by_rule", rule) for rule in ("plain", "coherent"))
            cells[f"{set_name}: all in top-2"] = values(res, run, *plain, "all_in_topk")
            cells[f"{set_name}: all in coherent top-2"] = values(res, run, *coherent, "all_in_topk")
            for l in labels:
                cells[f"{set_name}: {l} top-1"] = values(res, run, *plain, "top1", l)
                cells[f"{set_name}: {l} in top-2"] = values(res, run, *plain, "topk", l)
        table.add(name, cells)
    return table


def parse_variants(items: list[str] | None) -> dict[str, str]:
    """NAME=DIR pairs of --variant; ValueError naming the bad one."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--variant '{item}': write NAME=DIR (e.g. no_mix=artifacts_variants/no_mix)")
        if name in out:
            raise ValueError(f"--variant {name} given twice")
        out[name] = path
    return out
