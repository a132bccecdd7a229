"""`evaluate.py report`: evaluate every trial under an artifacts folder and write results/.

Layout read: ARTIFACTS/<run>/<trial>/best.pt with run = uni | multi | task_<task>. Written:
REPORT.md, one CSV per table, per-trial JSON under runs/, and the figures top2.png, roc.png,
reliability.png. Rows: efficiency-centric, multi-task, task-centric (per task where a table
compares whole models; in Tables 1-3 one task-centric row whose task columns each come from
that task's own model, as in the paper).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from data.spec import Spec
from evaluation import efficiency
from evaluation.checkpoint import evaluate_checkpoint, to_json
from evaluation.inference import load_model
from evaluation.scores import paper_scorer
from evaluation.tables import Table, mean_std
from evaluation.metrics import reliability
from utils import CheckpointError

UNI, MULTI, TASK = "efficiency-centric", "multi-task", "task-centric"


def run_names(spec: Spec) -> list[str]:
    return ["uni", "multi", *[f"task_{t}" for t in spec.tasks]]


def display(run: str) -> str:
    return {"uni": UNI, "multi": MULTI}.get(run, f"{TASK} ({run[5:]})")


def find_checkpoints(artifacts: Path, spec: Spec) -> dict[str, dict[str, Path]]:
    artifacts = Path(artifacts)
    if not artifacts.is_dir():
        raise CheckpointError(f"{artifacts}: artifacts folder not found; train first (sh run/reproduce.sh)")
    known = run_names(spec)
    found: dict[str, dict[str, Path]] = {}
    for run_dir in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        if run_dir.name not in known:
            print(f"warning: {run_dir}: not a run of {spec.file} ({', '.join(known)}); ignored", file=sys.stderr)
            continue
        trials = {t.name: t / "best.pt" for t in sorted(run_dir.iterdir()) if (t / "best.pt").is_file()}
        if trials:
            found[run_dir.name] = trials
    if not found:
        raise CheckpointError(f"{artifacts}: no <run>/<trial>/best.pt (run = {', '.join(known)}); train first")
    return {r: found[r] for r in known if r in found}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return float("nan")
        d = d[k]
    return d


def evaluate_all(artifacts, spec: Spec, cache_dir, *, device="cpu", batch_size=32, progress=True, workers=0):
    """({run: {trial: (metrics, raw)}}, {run: model bundle of its first trial}) for every
    ARTIFACTS/<run>/<trial>/best.pt; each image set is inferred once per checkpoint (cached)."""
    results: dict[str, dict[str, tuple[dict, dict]]] = {}
    first_models = {}
    for run, trials in find_checkpoints(artifacts, spec).items():
        results[run] = {}
        for trial, path in trials.items():
            bundle = load_model(path, spec, device)
            if bundle[1].run_name != run:
                raise CheckpointError(f"{path}: a {bundle[1].run_name} checkpoint in the folder of run '{run}'; "
                                      f"move it to {Path(artifacts) / bundle[1].run_name}")
            results[run][trial] = evaluate_checkpoint(path, spec, device=device, batch_size=batch_size,
                                                      cache_dir=cache_dir, progress=progress, workers=workers,
                                                      model_bundle=bundle)
            first_models.setdefault(run, bundle)
    return results, first_models


def build_report(artifacts, spec: Spec, out, *, device="cpu", batch_size=32, cache_dir=None, progress=True,
                 efficiency_images: int = 64, workers: int = 0) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, first_models = evaluate_all(artifacts, spec, cache_dir or out / "cache", device=device,
                                         batch_size=batch_size, progress=progress, workers=workers)
    for run, trials in results.items():
        (out / "runs" / run).mkdir(parents=True, exist_ok=True)
        for trial, (metrics_, _) in trials.items():
            (out / "runs" / run / f"{trial}.json").write_text(to_json(metrics_))
    header = describe(results, spec)
    tables = make_tables(results, spec)
    eff = measure_efficiency(first_models, spec, device, efficiency_images, batch_size)
    if eff is not None:
        tables.append(eff)
    figures = [f for f in (plot_top2(results, spec, out), plot_roc(results, spec, out),
                           plot_reliability(results, out)) if f]
    lines = [f"# Evaluation report: {spec.name}", "", header, "",
             "Every number is mean ± std (population std) over the trials; best per column in bold. "
             "Per-trial metrics: `runs/<run>/<trial>.json`.", ""]
    for key, table in tables:
        lines += [f"## {table.title}", "", f"*{header}*", "", table.markdown(), ""]
        if table.note:
            lines += [table.note, ""]
        table.write_csv(out / f"{key}.csv")
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    return report


def describe(results, spec: Spec) -> str:
    profiles = sorted({f"{m['profile']} ({m['backbone']}, {m['crop']} px, {m['epochs']} epochs)"
                       for trials in results.values() for m, _ in trials.values()})
    trials = ", ".join(f"{run} {len(t)}" for run, t in results.items())
    return f"dataset {spec.name}; profile {' / '.join(profiles)}; trials: {trials}"


def values(results, run, *keys) -> list[float]:
    return [_get(m, *keys) for m, _ in results.get(run, {}).values()]


def make_tables(results, spec: Spec) -> list[tuple[str, Table]]:
    tasks = list(spec.tasks)
    task_runs = [f"task_{t}" for t in tasks if f"task_{t}" in results]
    set_cols = [(t, s) for t in tasks for s in ["test", *spec.external.get(t, {})]]
    col = {(t, s): f"{t}: {s}" for t, s in set_cols}
    out = []
    for key, metric, title in (("table1_accuracy", "accuracy", "Table 1: accuracy (RQ1)"),
                               ("table2_f1", "f1_macro", "Table 2: macro F1 (RQ1)")):
        table = Table(title, [col[c] for c in set_cols],
                      note="Each task on the images of its two classes; external sets as named in the spec. "
                           "Efficiency-centric: positive iff the argmax over all classes is the task's positive "
                           "class; 'restricted' compares only the task's two classes; multi-task: the task's sigmoid "
                           "head > 0.5; task-centric: each task's own 2-class model.")
        if "uni" in results:
            table.add(UNI, {col[(t, s)]: values(results, "uni", "tasks", t, "sets", s, metric) for t, s in set_cols})
            table.add(f"{UNI}, restricted to the task's 2 classes",
                      {col[(t, s)]: values(results, "uni", "tasks", t, "sets", s, "restricted", metric)
                       for t, s in set_cols})
        if "multi" in results:
            table.add(MULTI, {col[(t, s)]: values(results, "multi", "tasks", t, "sets", s, metric) for t, s in set_cols})
        if task_runs:
            table.add(TASK, {col[(t, s)]: values(results, f"task_{t}", "tasks", t, "sets", s, metric)
                             for t, s in set_cols})
        missing = sorted({f"{display(run)}, task {t}: {e['missing']}" for run, trials in results.items()
                          for m, _ in trials.values() for t, e in m["tasks"].items() if "missing" in e})
        if missing:
            table.note += " Missing cells: " + "; ".join(missing) + "."
        out.append((key, table))

    t3 = Table("Table 3: one-class recognition AUROC (RQ2)", [f"{t} ({spec.tasks[t][1]})" for t in tasks],
               note="Inside the test split: the task's positive class against every other class, scored by "
                    "the class's probability (efficiency-centric: softmax over all classes; task-centric: its "
                    "2-class softmax; multi-task: the class's sigmoid head).")
    for run, name in (("uni", UNI), ("multi", MULTI)):
        if run in results:
            t3.add(name, {f"{t} ({spec.tasks[t][1]})": values(results, run, "tasks", t, "one_class", "auroc")
                          for t in tasks})
    if task_runs:
        t3.add(TASK, {f"{t} ({spec.tasks[t][1]})": values(results, f"task_{t}", "tasks", t, "one_class", "auroc")
                      for t in tasks})
    out.append(("table3_one_class_auroc", t3))

    oods = list(spec.ood)
    if oods:
        cols = [f"{o} {k}" for o in oods for k in ("AUROC", "FPR@95")]
        t4 = Table("Table 4: irrelevant-sample rejection (RQ2)", cols,
                   lower_is_better={f"{o} FPR@95" for o in oods},
                   note="In-distribution: the whole test split (positive) against each OOD set. Score: the "
                        "paper's per paradigm (max logit; multi-task: KL divergence of its heads to uniform). "
                        "Every scorer with AUPR: table4_rejection_scorers.csv.")
        t4b = Table("Table 4b: rejection AUROC by OOD score", [f"{o} AUROC" for o in oods],
                    note="kl_uniform = sum over heads of KL(head distribution || uniform); for the multi-task model "
                         "max_logit / energy are over the concatenated head logits and max_softmax over each "
                         "head's own probabilities.")
        for run in results:
            scorer = paper_scorer(results[run][next(iter(results[run]))][0]["paradigm"])
            cells = {}
            for o in oods:
                cells[f"{o} AUROC"] = values(results, run, "rejection", o, scorer, "auroc")
                cells[f"{o} FPR@95"] = values(results, run, "rejection", o, scorer, "fpr95")
            t4.add(f"{display(run)} [{scorer}]", cells)
            for s in ("max_logit", "max_softmax", "energy", "kl_uniform"):
                t4b.add(f"{display(run)} [{s}]", {f"{o} AUROC": values(results, run, "rejection", o, s, "auroc")
                                                  for o in oods})
        out += [("table4_rejection", t4), ("table4_rejection_scorers", t4b)]

    for name, mset in spec.multilabel.items():
        labels = list(mset.labels)
        cols = ["all labels in top-2", *[f"{l} top-1" for l in labels], *[f"{l} in top-2" for l in labels]]
        t5 = Table(f"Table 5: multi-label set '{name}' ({' + '.join(labels)}), top-2 (RQ3)", cols, no_bold=set(),
                   note="Share of images. Efficiency-centric: top-2 of the softmax over all classes; multi-task: "
                        "classes ranked by sigmoid (binary heads), softmax (other head) and prod(1 - sigmoid) "
                        "(the negative class); task-centric: a label is found when its task's model says positive "
                        "(the union of the task tables; 'in top-2' = found), a label without a task is never found.")
        for run, disp in (("uni", UNI), ("multi", MULTI)):
            if run in results:
                cells = {"all labels in top-2": values(results, run, "multilabel", name, "all_in_topk")}
                for l in labels:
                    cells[f"{l} top-1"] = values(results, run, "multilabel", name, "top1", l)
                    cells[f"{l} in top-2"] = values(results, run, "multilabel", name, "topk", l)
                t5.add(disp, cells)
        union = task_union(results, spec, name, labels)
        if union:
            t5.add(f"{TASK} (union of task tables)",
                   {"all labels in top-2": [u["all"] for u in union],
                    **{f"{l} in top-2": [u[l] for u in union] for l in labels}})
        out.append((f"table5_top2_{name}", t5))

    t6 = Table("Table 6: calibration on the test split", ["ECE (15 bins)", "accuracy", "mean confidence"],
               lower_is_better={"ECE (15 bins)"}, no_bold={"mean confidence"},
               note="Decisions: efficiency-centric one per image over all classes; task-centric one per image "
                    "of its two classes; multi-task one per labelled (image, head) pair (binary head confidence "
                    "max(p, 1-p)). Diagram: reliability.png.")
    for run in results:
        t6.add(display(run), {"ECE (15 bins)": values(results, run, "calibration", "ece"),
                              "accuracy": values(results, run, "calibration", "accuracy"),
                              "mean confidence": values(results, run, "calibration", "mean_confidence")})
    out.append(("table6_calibration", t6))
    return out


def task_union(results, spec: Spec, name: str, labels: list[str]) -> list[dict]:
    """Per trial name present in every task run: share of images where each label's task model says
    positive, and where all labels are found."""
    runs = [f"task_{t}" for t in spec.tasks if f"task_{t}" in results]
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


def measure_efficiency(first_models, spec: Spec, device, n_images: int, batch_size: int):
    systems = {}
    if "uni" in first_models:
        systems[UNI] = [first_models["uni"]]
    if "multi" in first_models:
        systems[MULTI] = [first_models["multi"]]
    task_runs = [f"task_{t}" for t in spec.tasks]
    if spec.tasks and all(r in first_models for r in task_runs):
        systems[f"{TASK} ({len(task_runs)} models)"] = [first_models[r] for r in task_runs]
    if not systems:
        return None
    samples = spec.split_samples("test")
    step = max(1, len(samples) // max(n_images, 1))
    paths = [p for p, _ in samples[::step][:n_images]]
    measured = efficiency.measure({k: [(m, ck["args"]["crop"]) for m, _, ck in v] for k, v in systems.items()},
                                  paths, batch_size=min(batch_size, 16), device=device)
    table = Table("Table 7: efficiency — serving every task", ["models", "forward passes per image", "parameters (M)",
                                                              "inference ms per image"],
                  lower_is_better={"models", "forward passes per image", "parameters (M)", "inference ms per image"},
                  column_digits={"models": 0, "forward passes per image": 0, "parameters (M)": 2,
                                 "inference ms per image": 2},
                  note=f"Measured in one run on the same {len(paths)} test images on {device} (batch "
                       f"{min(batch_size, 16)}, best of 2 after a warm-up batch), first trial of each run. "
                       f"Tasks served: {', '.join(spec.tasks)}.")
    for name, m in measured.items():
        table.add(name, {"models": [m["models"]], "forward passes per image": [m["forward_passes_per_image"]],
                         "parameters (M)": [m["params"] / 1e6], "inference ms per image": [m["ms_per_image"]]})
    return ("table7_efficiency", table)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_top2(results, spec: Spec, out: Path):
    if not spec.multilabel:
        return None
    plt = _plt()
    sets = list(spec.multilabel.items())
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, (name, mset) in zip(axes[0], sets):
        labels = list(mset.labels)
        groups = [*[f"{l} in top-2" for l in labels], "all labels"]
        bars = {}
        for run, disp in (("uni", UNI), ("multi", MULTI)):
            if run in results:
                bars[disp] = [mean_std(values(results, run, "multilabel", name, "topk", l))[0] for l in labels] + \
                             [mean_std(values(results, run, "multilabel", name, "all_in_topk"))[0]]
        union = task_union(results, spec, name, labels)
        if union:
            bars[TASK] = [mean_std([u[l] for u in union])[0] for l in labels] + [mean_std([u["all"] for u in union])[0]]
        width = 0.8 / max(len(bars), 1)
        for i, (disp, ys) in enumerate(bars.items()):
            ax.bar(np.arange(len(groups)) + i * width, np.nan_to_num(ys), width, label=disp)
        ax.set_xticks(np.arange(len(groups)) + width * (len(bars) - 1) / 2, groups)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of images")
        ax.set_title(f"{name}: {' + '.join(labels)}")
        ax.legend(fontsize=8)
    return save(fig, out / "top2.png")


def plot_roc(results, spec: Spec, out: Path):
    if not spec.ood:
        return None
    from sklearn.metrics import roc_curve
    plt = _plt()
    fig, axes = plt.subplots(1, len(spec.ood), figsize=(5 * len(spec.ood), 4.5), squeeze=False)
    for ax, name in zip(axes[0], spec.ood):
        for run, trials in results.items():
            m, raw = trials[next(iter(trials))]
            scorer = paper_scorer(m["paradigm"])
            id_s, ood_s = raw["rejection"][name][scorer]
            y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
            fpr, tpr, _ = roc_curve(y, np.r_[id_s, ood_s])
            ax.plot(fpr, tpr, label=f"{display(run)} [{scorer}] {m['rejection'][name][scorer]['auroc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false-positive rate (OOD accepted)")
        ax.set_ylabel("true-positive rate (test images accepted)")
        ax.set_title(f"rejection: test split v {name} (first trial)")
        ax.legend(fontsize=7, loc="lower right")
    return save(fig, out / "roc.png")


def plot_reliability(results, out: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    for run, trials in results.items():
        conf = np.concatenate([raw["calibration"][0] for _, raw in trials.values()])
        corr = np.concatenate([raw["calibration"][1] for _, raw in trials.values()])
        if conf.size == 0:
            continue
        r = reliability(conf, corr, 15)
        keep = [i for i, c in enumerate(r["count"]) if c > 0]
        ece = mean_std(values(results, run, "calibration", "ece"))[0]
        ax.plot([r["conf"][i] for i in keep], [r["acc"][i] for i in keep], "o-", ms=3,
                label=f"{display(run)} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability on the test split (15 bins, all trials)")
    ax.legend(fontsize=7)
    return save(fig, out / "reliability.png")
