"""The report's and the notebooks' figures: each function draws from `evaluate_all`'s results
({run: {trial: (metrics, raw)}}), writes one PNG (or one per run) under `out`, with an SVG copy
beside it, and returns the PNG path(s).

Sized for a printed page: at most 3 panels per row, 7.5 in wide at most, text at 9-10 pt at the
saved size (PNG at 150 dpi). The numbers come from evaluation.paper_tables' helpers (`values`,
`task_union`) and scikit-learn; nothing here computes a metric of its own. Matplotlib runs
headless (Agg).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data.images import ImageError, load_rgb
from evaluation.metrics import reliability
from evaluation.paper_tables import (MULTI, TASK, UNI, display, first_trial, run_default, run_paper_scorer, task_union,
                               values)
from evaluation.tables import mean_std

MAX_COLUMNS = 3
PANEL = (2.5, 2.2)  # inches per panel: three make a 7.5 in page width
DPI = 150
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "figure.titlesize": 10, "svg.fonttype": "none"}  # SVG text stays text


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update(STYLE)
    return plt


def grid(n: int, panel: tuple[float, float] = PANEL, **kw):
    """A figure of `n` panels, at most MAX_COLUMNS per row (constrained layout); (fig, the n axes)."""
    plt = _plt()
    cols = max(1, min(n, MAX_COLUMNS))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False,
                             layout="constrained", **kw)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:max(n, 1)]


def shared_legend(fig, axes, ncols: int = 2) -> None:
    """One legend under the panels for every labelled line or bar drawn in them (each label once)."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(ncols, len(seen)),
                   frameon=False)


def save(fig, path: Path) -> Path:
    """Write `path` (PNG) and the same figure as SVG beside it; returns `path`."""
    plt = _plt()
    fig.savefig(path, dpi=DPI)
    fig.savefig(Path(path).with_suffix(".svg"))
    plt.close(fig)
    return path


def plot_top2(results, spec, out: Path):
    """top2.png: per multi-label set, the share of images with each label (and all) in the top-2 (the
    efficiency-centric model under both ranking rules, Table 5)."""
    if not spec.multilabel:
        return None
    sets = list(spec.multilabel.items())
    fig, axes = grid(len(sets), (5.0, 3.0) if len(sets) == 1 else (2.5, 2.8), sharey=True)
    for ax, (name, mset) in zip(axes, sets):
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
        ax.set_title(f"{name}: {' + '.join(labels)}")
    axes[0].set_ylabel("share of images")
    shared_legend(fig, axes)
    return save(fig, out / "top2.png")


def _grouped_bars(ax, groups: list[str], bars: dict[str, tuple[list[float], list[float] | None]]) -> None:
    """One group of bars per `groups` entry, one bar per series (label -> (heights, error bars or None))."""
    width = 0.8 / max(len(bars), 1)
    for i, (label, (ys, err)) in enumerate(bars.items()):
        ax.bar(np.arange(len(groups)) + i * width, np.nan_to_num(ys), width, label=label,
               yerr=None if err is None else np.nan_to_num(err), capsize=3)
    ax.set_xticks(np.arange(len(groups)) + width * (len(bars) - 1) / 2, groups)
    ax.set_ylim(0, 1)


def plot_roc(results, spec, out: Path):
    """roc.png: one panel per OOD set, ROC of the test split against it for each run's paper scorer
    (solid) and default scorer (dashed, where it differs), first trial; one colour per run. The
    AUROCs are Table 4's."""
    if not spec.ood:
        return None
    from sklearn.metrics import roc_curve
    fig, axes = grid(len(spec.ood), (2.5, 2.5))
    for ax, name in zip(axes, spec.ood):
        for i, run in enumerate(results):
            raw = first_trial(results, run)[1]
            paper, default = run_paper_scorer(results, run), run_default(results, run)
            for scorer, style in [(paper, "-")] + ([(default, "--")] if default != paper else []):
                id_s, ood_s = raw["rejection"][name][scorer]
                fpr, tpr, _ = roc_curve(np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s])
                ax.plot(fpr, tpr, style, color=f"C{i}", lw=1.2, label=f"{display(run)} [{scorer}]")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(_ood_title(spec, name))
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    for ax in axes[-min(len(axes), MAX_COLUMNS):]:
        ax.set_xlabel("FPR (OOD accepted)")
    for ax in axes[::MAX_COLUMNS]:
        ax.set_ylabel("TPR (test accepted)")
    fig.suptitle("Rejection ROC: test split v each OOD set (first trial)")
    shared_legend(fig, axes)
    return save(fig, out / "roc.png")


def _ood_title(spec, name: str) -> str:
    kind = spec.ood_kind.get(name) if getattr(spec, "ood_kind", None) else None
    return f"{name} ({kind})" if kind else name


def plot_score_histograms(results, spec, out: Path) -> list[Path]:
    """score_histograms_<run>.png per run: one panel per OOD set, the run's default OOD scorer (chosen
    on val + ood_val) on the test split (in distribution) against the OOD set's, first trial."""
    if not spec.ood or not results:
        return []
    from matplotlib.ticker import MaxNLocator
    paths = []
    for run in results:
        scorer = run_default(results, run)
        raw = first_trial(results, run)[1]
        fig, axes = grid(len(spec.ood))
        for ax, name in zip(axes, spec.ood):
            id_s, ood_s = raw["rejection"][name][scorer]
            bins = np.histogram_bin_edges(np.r_[id_s, ood_s], bins=30)
            ax.hist(id_s, bins, alpha=0.6, density=True, label=f"test split ({len(id_s)} images)")
            ax.hist(ood_s, bins, alpha=0.6, density=True, label="the panel's OOD set")
            ax.set_title(f"{_ood_title(spec, name)}: {len(ood_s)} images")
            ax.set_yticks([])
            ax.xaxis.set_major_locator(MaxNLocator(4))  # long score values overlap otherwise
        for ax in axes[-min(len(axes), MAX_COLUMNS):]:
            ax.set_xlabel(f"{scorer} (higher: in distribution)")
        for ax in axes[::MAX_COLUMNS]:
            ax.set_ylabel("density")
        fig.suptitle(f"{display(run)}: default OOD score, first trial")
        shared_legend(fig, axes)
        paths.append(save(fig, out / f"score_histograms_{run}.png"))
    return paths


def plot_reliability(results, out: Path):
    """reliability.png: accuracy against confidence (15 bins) of each run's decisions, all trials,
    before (left) and after (right) temperature scaling; the legend gives each run's mean ECE."""
    fig, axes = grid(2, (3.7, 3.9))
    for ax, stage in zip(axes, ("before", "after")):
        ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
        for run, trials in results.items():
            conf = np.concatenate([raw["calibration"][stage][0] for _, raw in trials.values()])
            corr = np.concatenate([raw["calibration"][stage][1] for _, raw in trials.values()])
            if conf.size == 0:
                continue
            r = reliability(conf, corr, 15)
            keep = [i for i, c in enumerate(r["count"]) if c > 0]
            ece = mean_std(values(results, run, "calibration", stage, "ece"))[0]
            ax.plot([r["conf"][i] for i in keep], [r["acc"][i] for i in keep], "o-", ms=3,
                    label=f"{display(run)} (ECE {ece:.3f})")
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("before calibration" if stage == "before" else "temperature-scaled (fitted on val)")
        ax.legend(loc="upper left")
    axes[0].set_ylabel("accuracy")
    fig.suptitle("Reliability on the test split (15 bins, all trials)")
    return save(fig, out / "reliability.png")


def model_classes(metrics: dict, spec) -> list[str]:
    """The classes a run was trained on: its task's two for a task-centric model, else every class."""
    return list(metrics["classes"])


def plot_confusion(results, spec, out: Path) -> list[Path]:
    """confusion_<run>.png per run: true class (rows) against top-1 (columns) on the test split, counts
    summed over the run's trials; a task-centric model's matrix keeps only images of its two classes."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix
    paths = []
    for run, trials in results.items():
        classes = model_classes(first_trial(results, run)[0], spec)
        counts = sum(confusion_matrix(raw["test"]["labels"], raw["test"]["top1"], labels=classes)
                     for _, raw in trials.values())
        size = min(6.5, 1.8 + 0.5 * len(classes))
        fig, (ax,) = grid(1, (size + 0.5, size))
        ConfusionMatrixDisplay(counts, display_labels=classes).plot(ax=ax, cmap="Blues", colorbar=False,
                                                                    xticks_rotation=45)
        ax.set_xlabel("top-1 prediction")
        ax.set_ylabel("true class")
        ax.set_title(f"{display(run)}: test split, counts summed over {len(trials)} trial(s)")
        paths.append(save(fig, out / f"confusion_{run}.png"))
    return paths


def plot_ext_val(results, spec, out: Path):
    """ext_val.png: one panel per external-validation set (shift); per run (one colour each), mean ±
    std accuracy over trials of the set's task (a task-centric run only on its own task)."""
    sets = [(t, s) for t, suite in spec.external.items() for s in suite]
    if not sets:
        return None
    runs_all = list(results)
    fig, axes = grid(len(sets), sharey=True)
    for ax, (task, name) in zip(axes, sets):
        runs = [r for r in results if task in first_trial(results, r)[0]["tasks"]]  # a task model: its own task
        stats = [mean_std(values(results, r, "tasks", task, "sets", name, "accuracy")) for r in runs]
        colours = [f"C{runs_all.index(r)}" for r in runs]
        for i, (r, (m, s), c) in enumerate(zip(runs, stats, colours)):
            ax.bar(i, np.nan_to_num(m), yerr=np.nan_to_num(s), capsize=3, color=c, label=display(r))
        ax.set_xticks([])
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: {name}")
    for ax in axes[::MAX_COLUMNS]:
        ax.set_ylabel("accuracy")
    fig.suptitle("External validation: accuracy, mean ± std over trials")
    shared_legend(fig, axes)
    return save(fig, out / "ext_val.png")


def plot_multilabel_examples(results, spec, out: Path, n: int = 6) -> list[Path]:
    """multilabel_<set>.png per multi-label set: its first `n` images with the efficiency-centric
    model's top-2 (first trial) under each, and the coherent rule's second label where it differs."""
    if "uni" not in results:
        return []
    raw = first_trial(results, "uni")[1]
    paths = []
    for name, mset in spec.multilabel.items():
        ranked, coherent = (raw["multilabel"][name]["by_rule"][r] for r in ("plain", "coherent"))
        # The unreadable images have no row in `ranked` (evaluation drops them), so skip them here too.
        images = [im for im in map(_readable, spec.flat_images(mset.path)) if im is not None]
        shown = list(zip(images, ranked, coherent))[:n]
        fig, axes = grid(len(shown), (2.5, 2.9))
        for ax, (image, top, top_c) in zip(axes, shown):
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            lines = [f"{i}. {c}" for i, c in enumerate(top[:2], 1)]
            lines += [f"coherent 2. {top_c[1]}"] if top_c[1:2] != top[1:2] else []
            ax.set_xlabel("\n".join(lines))
        fig.suptitle(f"{name} ({' + '.join(mset.labels)}): {UNI} top-2\n(and the coherent rule's "
                     f"second label where it differs)")
        paths.append(save(fig, out / f"multilabel_{name}.png"))
    return paths


def _readable(path):
    try:
        return load_rgb(path)
    except ImageError:
        return None
