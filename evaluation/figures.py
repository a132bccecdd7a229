"""The report's and the notebooks' figures: each function draws from `evaluate_all`'s results
({run: {trial: (metrics, raw)}}), writes one PNG (or one per run) under `out` and returns its path(s).

The numbers come from evaluation.report's helpers (`values`, `task_union`) and scikit-learn; nothing
here computes a metric of its own. Matplotlib runs headless (Agg).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.images import ImageError, load_rgb
from evaluation.metrics import reliability
from evaluation.report import (MULTI, TASK, UNI, display, first_trial, run_default, run_paper_scorer, task_union,
                               values)
from evaluation.tables import mean_std


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


def plot_top2(results, spec, out: Path):
    """top2.png: per multi-label set, the share of images with each label (and all) in the top-2 (the
    efficiency-centric model under both ranking rules, Table 5)."""
    if not spec.multilabel:
        return None
    plt = _plt()
    sets = list(spec.multilabel.items())
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, (name, mset) in zip(axes[0], sets):
        labels = list(mset.labels)
        groups = [*[f"{l} in top-2" for l in labels], "all labels"]
        bars = {}
        series = (("uni", UNI, "plain"), ("uni", f"{UNI}, coherent", "coherent"), ("multi", MULTI, "plain"))
        for run, disp, rule in series:
            if run in results:
                key = ("multilabel", name, "by_rule", rule)
                bars[disp] = [mean_std(values(results, run, *key, "topk", l))[0] for l in labels] + \
                             [mean_std(values(results, run, *key, "all_in_topk"))[0]]
        union = task_union(results, spec, name, labels)
        if union:
            bars[TASK] = [mean_std([u[l] for u in union])[0] for l in labels] + [mean_std([u["all"] for u in union])[0]]
        _grouped_bars(ax, groups, {k: (v, None) for k, v in bars.items()})
        ax.set_ylabel("share of images")
        ax.set_title(f"{name}: {' + '.join(labels)}")
    return save(fig, out / "top2.png")


def _grouped_bars(ax, groups: list[str], bars: dict[str, tuple[list[float], list[float] | None]]) -> None:
    """One group of bars per `groups` entry, one bar per series (label -> (heights, error bars or None))."""
    width = 0.8 / max(len(bars), 1)
    for i, (label, (ys, err)) in enumerate(bars.items()):
        ax.bar(np.arange(len(groups)) + i * width, np.nan_to_num(ys), width, label=label,
               yerr=None if err is None else np.nan_to_num(err), capsize=3)
    ax.set_xticks(np.arange(len(groups)) + width * (len(bars) - 1) / 2, groups, fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)


def plot_roc(results, spec, out: Path):
    """roc.png: ROC of the test split against each OOD set, each run's paper scorer and default scorer
    (when it differs), first trial."""
    if not spec.ood:
        return None
    from sklearn.metrics import roc_curve
    plt = _plt()
    fig, axes = plt.subplots(1, len(spec.ood), figsize=(5 * len(spec.ood), 4.5), squeeze=False)
    for ax, name in zip(axes[0], spec.ood):
        for run in results:
            m, raw = first_trial(results, run)
            paper, default = run_paper_scorer(results, run), run_default(results, run)
            for scorer, style in [(paper, "-")] + ([(default, "--")] if default != paper else []):
                id_s, ood_s = raw["rejection"][name][scorer]
                fpr, tpr, _ = roc_curve(np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s])
                ax.plot(fpr, tpr, style, label=f"{display(run)} [{scorer}] {m['rejection'][name][scorer]['auroc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false-positive rate (OOD accepted)")
        ax.set_ylabel("true-positive rate (test images accepted)")
        ax.set_title(f"rejection: test split v {name} (first trial)")
        ax.legend(fontsize=7, loc="lower right")
    return save(fig, out / "roc.png")


def plot_score_histograms(results, spec, out: Path):
    """score_histograms.png: one row per run, one panel per OOD set: the run's default OOD scorer
    (chosen on val + ood_val) on the test split (in distribution) against the OOD set's, first trial."""
    if not spec.ood or not results:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(results), len(spec.ood), figsize=(4.5 * len(spec.ood), 3 * len(results)),
                             squeeze=False)
    for row, run in zip(axes, results):
        scorer = run_default(results, run)
        raw = first_trial(results, run)[1]
        for ax, name in zip(row, spec.ood):
            id_s, ood_s = raw["rejection"][name][scorer]
            bins = np.histogram_bin_edges(np.r_[id_s, ood_s], bins=30)
            ax.hist(id_s, bins, alpha=0.6, density=True, label=f"test split ({len(id_s)})")
            ax.hist(ood_s, bins, alpha=0.6, density=True, label=f"{name} ({len(ood_s)})")
            ax.set_xlabel(f"{scorer} (higher = in distribution)")
            ax.set_ylabel("density")
            ax.set_title(f"{display(run)}: test v {name}{f' ({spec.ood_kind[name]})' if spec.ood_kind.get(name) else ''}",
                         fontsize=9)
            ax.legend(fontsize=7)
    return save(fig, out / "score_histograms.png")


def plot_reliability(results, out: Path):
    """reliability.png: accuracy against confidence (15 bins) of each run's decisions, all trials."""
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


def model_classes(metrics: dict, spec) -> list[str]:
    """The classes a run was trained on: its task's two for a task-centric model, else every class."""
    return list(metrics["classes"])


def plot_confusion(results, spec, out: Path) -> list[Path]:
    """confusion_<run>.png per run: true class (rows) against top-1 (columns) on the test split, counts
    summed over the run's trials; a task-centric model's matrix keeps only images of its two classes."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix
    plt = _plt()
    paths = []
    for run, trials in results.items():
        classes = model_classes(first_trial(results, run)[0], spec)
        counts = sum(confusion_matrix(raw["test"]["labels"], raw["test"]["top1"], labels=classes)
                     for _, raw in trials.values())
        size = 2 + 0.6 * len(classes)
        fig, ax = plt.subplots(figsize=(size + 1, size))
        ConfusionMatrixDisplay(counts, display_labels=classes).plot(ax=ax, cmap="Blues", colorbar=False,
                                                                    xticks_rotation=45)
        ax.set_xlabel("top-1 prediction")
        ax.set_ylabel("true class")
        ax.set_title(f"{display(run)}: test split, counts summed over {len(trials)} trial(s)", fontsize=9)
        paths.append(save(fig, out / f"confusion_{run}.png"))
    return paths


def plot_ext_val(results, spec, out: Path):
    """ext_val.png: one panel per external-validation set (shift); per run, mean ± std accuracy over
    trials of the set's task (a task-centric run only on its own task)."""
    sets = [(t, s) for t, suite in spec.external.items() for s in suite]
    if not sets:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets), 4), squeeze=False)
    for ax, (task, name) in zip(axes[0], sets):
        runs = [r for r in results if task in first_trial(results, r)[0]["tasks"]]  # a task model: its own task
        stats = [mean_std(values(results, r, "tasks", task, "sets", name, "accuracy")) for r in runs]
        ax.bar(range(len(runs)), np.nan_to_num([m for m, _ in stats]), yerr=np.nan_to_num([s for _, s in stats]),
               capsize=4, color=[f"C{i}" for i in range(len(runs))])
        ax.set_xticks(range(len(runs)), [display(r) for r in runs], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (mean ± std over trials)")
        ax.set_title(f"{task}: {name}", fontsize=9)
    return save(fig, out / "ext_val.png")


def plot_multilabel_examples(results, spec, out: Path, n: int = 8) -> list[Path]:
    """multilabel_<set>.png per multi-label set: its first `n` images with the efficiency-centric
    model's top-2 (first trial) under each, and the coherent rule's second label where it differs."""
    if "uni" not in results:
        return []
    plt = _plt()
    raw = first_trial(results, "uni")[1]
    paths = []
    for name, mset in spec.multilabel.items():
        ranked, coherent = (raw["multilabel"][name]["by_rule"][r] for r in ("plain", "coherent"))
        # The unreadable images have no row in `ranked` (evaluation drops them), so skip them here too.
        images = [im for im in map(_readable, spec.flat_images(mset.path)) if im is not None]
        shown = list(zip(images, ranked, coherent))[:n]
        fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(2.2 * max(len(shown), 1), 3.4), squeeze=False)
        for ax, (image, top, top_c) in zip(axes[0], shown):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            lines = [f"{i}. {c}" for i, c in enumerate(top[:2], 1)]
            lines += [f"coherent 2. {top_c[1]}"] if top_c[1:2] != top[1:2] else []
            ax.set_xlabel("\n".join(lines), fontsize=8)
        fig.suptitle(f"{name} ({' + '.join(mset.labels)}): {UNI} top-2 (and the coherent rule's "
                     f"second label where it differs)", fontsize=9)
        paths.append(save(fig, out / f"multilabel_{name}.png"))
    return paths


def _readable(path):
    try:
        return load_rgb(path)
    except ImageError:
        return None
