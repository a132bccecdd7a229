"""The report's tables (Tables 1-6 of REPORT.md) and the helpers that read per-trial results.

`results` is {run: {trial: (metrics, raw)}} as evaluation.report.evaluate_all returns it; every
table is an evaluation.tables.ReportTable with mean ± std over trials, bold only where a paired
bootstrap interval says so (evaluation/significance.py). Rows: efficiency-centric, multi-task,
task-centric (per task where a table compares whole models; in Tables 1-3 one task-centric row
whose task columns each come from that task's own model, as in the paper).
"""
from __future__ import annotations

import numpy as np

from data.spec import Spec
from evaluation import significance, stats
from models.paradigms import RANKINGS, TITLES, build_paradigm, run_label
from models.scores import SCORERS
from evaluation.tables import ReportTable

UNI, MULTI, TASK = TITLES["uni"], TITLES["multi"], TITLES["task"]
display = run_label
BOLD_RULE = ("Bold: the best mean, only where its 95 % paired bootstrap interval against the best row of every "
             "other paradigm excludes 0 (evaluation/significance.py); no bold: no paradigm is better beyond chance.")


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return float("nan")
        d = d[k]
    return d


def values(results, run, *keys) -> list[float]:
    return [_get(m, *keys) for m, _ in results.get(run, {}).values()]


TASK_METRICS = {"accuracy": ("table1_accuracy", "Table 1: accuracy (RQ1)"),
                "f1_macro": ("table2_f1", "Table 2: macro F1 (RQ1)")}
SET_COLUMNS = {"all": "", "test": ", test split", "external": ", external-validation sets"}


def make_tables(results, spec: Spec) -> list[tuple[str, ReportTable]]:
    """Every table of REPORT.md as (CSV name, table), in the paper's order."""
    tables = [(TASK_METRICS[m][0], table_task_accuracy(results, spec, m)) for m in TASK_METRICS]
    tables.append(("table1_accuracy_bn_adapt", table_task_accuracy(results, spec, "accuracy", adapt=True)))
    tables.append(("table3_one_class_auroc", table_one_class(results, spec)))
    if spec.ood:
        tables += [("table4_rejection", table_rejection(results, spec)),
                   ("table4_rejection_scorers", table_rejection_by_scorer(results, spec))]
    tables += [(f"table5_top2_{name}", table_top2(results, spec, name)) for name in spec.multilabel]
    tables.append(("table6_calibration", table_calibration(results)))
    return tables


def task_set_columns(spec: Spec, sets: str = "all") -> list[tuple[str, str]]:
    """(task, image set) columns of Tables 1-2; `sets` = all | test (the test split) | external."""
    cols = []
    for t in spec.tasks:
        if sets in ("all", "test"):
            cols.append((t, "test"))
        if sets in ("all", "external"):
            cols += [(t, s) for s in spec.external.get(t, {})]
    return cols


def table_task_accuracy(results, spec: Spec, metric: str = "accuracy", sets: str = "all",
                        adapt: bool = False) -> ReportTable:
    """Tables 1-2 (RQ1): `metric` (accuracy or f1_macro) of each paradigm's answer to each binary task;
    `sets` = all | test | external picks the columns; `adapt`: by each model with its BatchNorm
    statistics re-estimated on each set (test-time adaptation, models.adapt)."""
    title = TASK_METRICS[metric][1] + (", BatchNorm statistics adapted to each set" if adapt else "")
    set_cols = task_set_columns(spec, sets)
    col = {(t, s): f"{t}: {s}" for t, s in set_cols}
    table = ReportTable(title + SET_COLUMNS[sets], [col[c] for c in set_cols],
                        no_bold={col[c] for c in set_cols} if adapt else set(),
                        note="Each task on the images of its two classes; external sets as named in the spec. "
                             "Each paradigm's row answers each task by the rule chosen per checkpoint on val (and "
                             "the task's ext_val sets, when the spec has them; models/task_rules.py), for every "
                             "model alike, among 'argmax' (the head's own decision: the argmax over all classes, "
                             "the sigmoid head > 0.5, the 2-class softmax), 'two classes' (the positive class's "
                             "logit beats the negative's; a head over more classes) and 'threshold' (the two "
                             "classes' logit margin beats a threshold fitted on those validation images); every "
                             "rule follows as a row. Chosen: " + chosen_rules(results) + ". Task-centric: each "
                             "task's own 2-class model."
                             + (" Each model's BatchNorm statistics re-estimated on the set's own images before "
                                "predicting them (no labels; the test split: all of it): what a day's batch "
                                "could do; the gap to Table 1 is the share of the loss that is a statistics "
                                "shift. No bold (no paired test here)."
                                if adapt else ""))
    adapted = ("bn_adapt",) if adapt else ()

    def cells(run_of, *keys):
        return {col[(t, s)]: values(results, run_of(t), "tasks", t, "sets", s, *adapted, *keys, metric)
                for t, s in set_cols}

    rows = [(name, run_of) for name, run_of, present in (
        (UNI, lambda t: "uni", "uni" in results), (MULTI, lambda t: "multi", "multi" in results),
        (TASK, lambda t: task_run(spec, t), task_runs(results, spec))) if present]
    for name, run_of in rows:
        table.add(name, cells(run_of))
    for name, run_of in rows:
        for rule, label in RULE_ROWS.items():
            by_rule = cells(run_of, "by_rule", rule)
            if np.isfinite([x for v in by_rule.values() for x in v]).any():  # a rule this paradigm has
                table.add(f"{name}, {label}", by_rule)
    if adapt:
        return table
    stat = significance.TASK_STATS[metric]
    for t, s in set_cols:
        rows = {name: (run, significance.task_groups(results, run, t, s))
                for name, run in ((UNI, "uni"), (MULTI, "multi"), (TASK, task_run(spec, t)))}
        table.bold[col[(t, s)]] = significance.best_if_significant(stat, rows)[0]
    table.note += " " + BOLD_RULE
    missing = sorted({f"{display(run)}, task {t}: {e['missing']}" for run, trials in results.items()
                      for m, _ in trials.values() for t, e in m["tasks"].items() if "missing" in e})
    if missing:
        table.note += " Missing cells: " + "; ".join(missing) + "."
    return table


RULE_ROWS = {"argmax": "argmax", "restricted": "two classes", "threshold": "threshold fitted on val"}


def chosen_rules(results) -> str:
    """'efficiency-centric defect: two classes (3 of 3 trials), ...; multi-task ...' ('none recorded' without)."""
    seen = {}
    for run, trials in results.items():
        for m, _ in trials.values():
            for task, e in m["tasks"].items():
                if "rule_choice" in e:
                    rule = e["rule_choice"]["rule"]
                    seen.setdefault(f"{display(run).split(' (')[0]} {task}", []).append(RULE_ROWS.get(rule, rule))
    return "; ".join(f"{k}: " + ", ".join(f"{r} ({rules.count(r)} of {len(rules)} trials)" for r in sorted(set(rules)))
                     for k, rules in seen.items()) or "none recorded"


def table_one_class(results, spec: Spec) -> ReportTable:
    """Table 3 (RQ2): AUROC of each task's positive class against every other test image."""
    col = {t: f"{t} ({spec.tasks[t][1]})" for t in spec.tasks}
    table = ReportTable("Table 3: one-class recognition AUROC (RQ2)", list(col.values()),
                        note="Inside the test split: the task's positive class against every other class, scored "
                             "by the class's probability (efficiency-centric: softmax over all classes; "
                             "task-centric: its 2-class softmax; multi-task: the class's sigmoid head).")
    rows = [(run, name) for run, name in (("uni", UNI), ("multi", MULTI)) if run in results]
    for run, name in rows:
        table.add(name, {c: values(results, run, "tasks", t, "one_class", "auroc") for t, c in col.items()})
    if task_runs(results, spec):
        table.add(TASK, {c: values(results, task_run(spec, t), "tasks", t, "one_class", "auroc") for t, c in col.items()})
    return table


def table_rejection(results, spec: Spec) -> ReportTable:
    """Table 4 (RQ2): AUROC and FPR at 95 % TPR of the test split against each OOD set (and the mean
    over the near- and the far-OOD sets), by each run's paper scorer, its default scorer (chosen on
    val + ood_val, models/ood.py) and each feature detector fitted on its train split."""
    kinds = ood_kinds(spec)
    groups = {**{o: [o] for o in spec.ood}, **{f"{k}-OOD mean": sets for k, sets in kinds.items()}}
    table = ReportTable("Table 4: irrelevant-sample rejection (RQ2)",
                        [f"{g} {k}" for g in groups for k in ("AUROC", "FPR@95")],
                        lower_is_better={f"{g} FPR@95" for g in groups},
                        note="In-distribution: the whole test split (positive) against each OOD set. Scores: the "
                             "paper's per paradigm (max logit; multi-task: KL divergence of its heads to uniform); "
                             "default: the scorer each trial chose by the rule of models/ood.py (highest mean AUROC "
                             "over the ood_val sets against the val split; never these sets), named with how many "
                             "trials chose it; then the detectors on the concat classifier's hidden features, "
                             "fitted on the run's train split: knn (minus the distance to the k-th nearest "
                             "normalised train feature), mahalanobis (class means, tied covariance), rmds (relative "
                             "Mahalanobis), vim (energy minus the scaled residual outside the principal subspace). "
                             + (f"Near-OOD sets: {', '.join(kinds.get('near', []))}; far-OOD: "
                                f"{', '.join(kinds.get('far', []))}. " if kinds else "")
                             + "AUROC of every scorer: table4_rejection_scorers.csv; AUPR too: runs/<run>/<trial>.json.")
    contenders = {}
    for run in results:
        chosen = [m["rejection"].get("default") for m, _ in results[run].values()]
        named = ", ".join(f"{c}{f' x{chosen.count(c)}' if chosen.count(c) > 1 else ''}"
                          for c in dict.fromkeys(chosen) if c)
        rows = [(run_paper_scorer(results, run), run_paper_scorer(results, run))]
        if any(chosen):
            rows.append((DEFAULT, f"default: {named}"))
        rows += [(d, d) for d in run_detectors(results, run)]
        for scorer, label in rows:
            table.add(f"{display(run)} [{label}]",
                      {f"{g} {k}": rejection_values(results, run, sets, scorer, metric)
                       for g, sets in groups.items() for k, metric in (("AUROC", "auroc"), ("FPR@95", "fpr95"))})
            contenders[f"{display(run)} [{label}]"] = (run, scorer)
    for g, sets in groups.items():
        rows = {name: (run, significance.rejection_groups(results, run, sets, scorer, DEFAULT))
                for name, (run, scorer) in contenders.items()}
        table.bold[f"{g} AUROC"] = significance.best_if_significant(stats.mean_auroc_stat, rows)[0]
        table.bold[f"{g} FPR@95"] = None
    table.note += " " + BOLD_RULE + " FPR@95 is not bolded (no interval is computed for it)."
    return table


DEFAULT = "default"


def ood_kinds(spec: Spec) -> dict[str, list[str]]:
    """{'near': [...], 'far': [...]}: the OOD sets of each kind the spec names (kinds it does not, left out)."""
    kinds: dict[str, list[str]] = {}
    for o in spec.ood:
        if spec.ood_kind.get(o):
            kinds.setdefault(spec.ood_kind[o], []).append(o)
    return {k: kinds[k] for k in ("near", "far") if k in kinds}


def rejection_values(results, run: str, sets: list[str], scorer: str, metric: str) -> list[float]:
    """Per trial: `metric` of `scorer` (DEFAULT: the trial's own default) averaged over `sets`."""
    out = []
    for m, _ in results.get(run, {}).values():
        name = m["rejection"].get("default") if scorer == DEFAULT else scorer
        out.append(float(np.mean([_get(m, "rejection", o, name, metric) for o in sets])))
    return out


def table_rejection_by_scorer(results, spec: Spec) -> ReportTable:
    """Table 4b: rejection AUROC of every run under every OOD score and every feature detector."""
    table = ReportTable("Table 4b: rejection AUROC by OOD score", [f"{o} AUROC" for o in spec.ood],
                        note="kl_uniform = sum over heads of KL(head distribution || uniform); for the multi-task "
                             "model max_logit / energy are over the concatenated head logits and max_softmax over "
                             "each head's own probabilities. knn, mahalanobis, rmds, vim: detectors on the hidden "
                             "features of the same forward pass, fitted on the train split (classes: the dataset "
                             "classes the run trained on, not its heads).")
    for run in results:
        for s in (*SCORERS, *run_detectors(results, run)):
            table.add(f"{display(run)} [{s}]", {f"{o} AUROC": values(results, run, "rejection", o, s, "auroc")
                                                for o in spec.ood})
    return table


TEST_TOP2 = "test split: label in top-2"


def table_top2(results, spec: Spec, name: str) -> ReportTable:
    """Table 5 (RQ3): on multi-label set `name`, how often each label (and all of them) is in the top-2."""
    labels = list(spec.multilabel[name].labels)
    table = ReportTable(f"Table 5: multi-label set '{name}' ({' + '.join(labels)}), top-2 (RQ3)",
                        ["all labels in top-2", *[f"{l} top-1" for l in labels], *[f"{l} in top-2" for l in labels],
                         TEST_TOP2],
                        no_bold=set(),
                        note="Share of images. Efficiency-centric: top-2 of the softmax over all classes; multi-task: "
                             "classes ranked by sigmoid (binary heads), softmax (other head) and prod(1 - sigmoid) "
                             "(the negative class); 'coherent': a label that the one above it excludes (a task's "
                             "negative and positive class) moves down, so the second label can be true beside "
                             "the first (top-1 unchanged; models/paradigms.py); the last column is what the rule "
                             "costs on the single-label test split. Task-centric: a label is found when its task's "
                             "model says positive (the union of the task tables; 'in top-2' = found), a label "
                             "without a task is never found.")
    for run, disp in (("uni", UNI), ("multi", MULTI)):
        for rule in RANKINGS if run in results else ():
            key = ("multilabel", name, "by_rule", rule)
            cells = {"all labels in top-2": values(results, run, *key, "all_in_topk"),
                     TEST_TOP2: values(results, run, "test_top2", rule)}
            for l in labels:
                cells[f"{l} top-1"] = values(results, run, *key, "top1", l)
                cells[f"{l} in top-2"] = values(results, run, *key, "topk", l)
            table.add(disp if rule == "plain" else f"{disp}, {rule} top-2", cells)
    union = task_union(results, spec, name, labels)
    if union:
        table.add(f"{TASK} (union of task tables)",
                  {"all labels in top-2": [u["all"] for u in union],
                   **{f"{l} in top-2": [u[l] for u in union] for l in labels}})
    return table


CALIBRATION_STAGES = ("before", "after")  # temperature scaling (evaluation/checkpoint.py `calibration`)
CALIBRATION_FIGURES = {"ECE (15 bins)": "ece", "NLL": "nll", "Brier": "brier", "mean confidence": "mean_confidence"}


def table_calibration(results) -> ReportTable:
    """Table 6: ECE (15 bins), NLL, Brier and mean confidence of each run's own decisions on the test
    split before and after its temperature scaling (fitted on val), with accuracy (the same for both)."""
    columns = [f"{f} {s}" for f in CALIBRATION_FIGURES for s in CALIBRATION_STAGES] + ["accuracy"]
    table = ReportTable("Table 6: calibration on the test split, before and after temperature scaling", columns,
                        lower_is_better={c for c in columns if not c.startswith(("mean confidence", "accuracy"))},
                        no_bold={c for c in columns if c.startswith("mean confidence")},
                        note=calibration_note(results))
    for run in results:
        cells = {f"{f} {s}": values(results, run, "calibration", s, key)
                 for f, key in CALIBRATION_FIGURES.items() for s in CALIBRATION_STAGES}
        table.add(display(run), {**cells, "accuracy": values(results, run, "calibration", "accuracy")})
    return table


def calibration_note(results) -> str:
    """Table 6's note: what the decisions are, how the temperatures were fitted and what they are,
    and each run's ECE with its 95 % bootstrap interval before and after."""
    temps, intervals = [], []
    for run in results:
        heads = {}
        for m, _ in results[run].values():
            for head, t in m["calibration"]["temperatures"].items():
                heads.setdefault(head, []).append(t)
        temps.append(f"{display(run)} " + ", ".join(
            (f"{h} " if len(heads) > 1 else "") + f"{np.mean(ts):.2f}" for h, ts in heads.items()))
        r = {s: stats.interval(stats.ece_stat, significance.calibration_groups(results, run, s))
             for s in CALIBRATION_STAGES}
        floor = stats.ece_if_calibrated(significance.calibration_groups(results, run, "after"))
        intervals.append(f"{display(run)} {r['before']['value']:.3f} [{r['before']['lo']:.3f}, {r['before']['hi']:.3f}]"
                         f" -> {r['after']['value']:.3f} [{r['after']['lo']:.3f}, {r['after']['hi']:.3f}] (if calibrated: "
                         f"{floor['mean']:.3f}, 95th percentile {floor['hi']:.3f}; p = {floor['p']:.2f})")
    return ("Decisions: efficiency-centric one per image over all classes; task-centric one per image of its two "
            "classes; multi-task one per labelled (image, head) pair (binary head confidence max(p, 1-p)). "
            "After: each head's logits divided by its temperature, fitted per checkpoint on the val split only "
            "(minimum val NLL; models/calibration.py), the scores the pipeline serves; a temperature changes no "
            "decision, label or OOD score. NLL: mean -log p of the labelled class; Brier: summed over each head's "
            "classes (0 to 2). Temperatures (mean over trials, per head for the multi-task model): "
            + "; ".join(temps) + ". ECE with its 95 % bootstrap interval over the test images (trials pooled), "
            "before -> after: " + "; ".join(intervals) + ". 'If calibrated': the ECE a perfectly calibrated model "
            "with the same confidences would measure on as many decisions (outcomes drawn with probability their "
            "confidence; ECE is biased upward on a finite set, so this is the floor to read it against), and p the "
            "share of those draws at or above the measured ECE (small p: miscalibration beyond what the sample size "
            "explains). Diagram: reliability.png.")


def task_run(spec: Spec, task: str) -> str:
    """The run folder of the task-centric model of `task`."""
    return build_paradigm("task", spec, task).run_name


def task_runs(results, spec: Spec) -> list[str]:
    return [task_run(spec, t) for t in spec.tasks if task_run(spec, t) in results]


def run_paper_scorer(results, run: str) -> str:
    """The OOD score the paper uses for this run's paradigm (as recorded in its first trial's metrics)."""
    return first_trial(results, run)[0]["rejection"]["paper_scorer"]


def run_default(results, run: str) -> str:
    """The default OOD scorer of the run's first trial (its paper scorer in metrics written before defaults)."""
    return first_trial(results, run)[0]["rejection"].get("default") or run_paper_scorer(results, run)


def run_detectors(results, run: str) -> list[str]:
    """The feature detectors this run was evaluated with (none in metrics written before they existed)."""
    return list(first_trial(results, run)[0]["rejection"].get("detectors", []))


def first_trial(results, run: str) -> tuple[dict, dict]:
    return next(iter(results[run].values()))


def task_union(results, spec: Spec, name: str, labels: list[str]) -> list[dict]:
    """Per trial name present in every task run: share of images where each label's task model says
    positive, and where all labels are found."""
    runs = task_runs(results, spec)
    if not runs:
        return []
    trials = sorted(set.intersection(*[set(results[r]) for r in runs]))
    out = []
    for trial in trials:
        flags = {}
        for r in runs:
            flags.update(results[r][trial][1]["multilabel"].get(name, {}))
        n = len(next(iter(flags.values()))) if flags else 0
        if n == 0:
            continue
        found = {l: np.array(flags.get(l, [False] * n), bool) for l in labels}
        out.append({"all": float(np.logical_and.reduce(list(found.values())).mean()),
                    **{l: float(f.mean()) for l, f in found.items()}})
    return out
