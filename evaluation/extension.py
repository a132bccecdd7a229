"""The extension experiment's table (run/extend.sh): a model grown by extend.py against the model
before it, the naive no-replay extension and a full retrain on the whole new label space.

    python -m evaluation.extension --root artifacts/extend --old-data DIR --data DIR_WITH_NEW_CLASS

ROOT/<trial>/<row>/**/best.pt for each row of ROWS (rows that are missing are left out);
ROOT/<trial>/times.tsv (`row<TAB>seconds`) the wall time of each row's command. The `before` row is
evaluated on --old-data (its own classes), every other row on --data. Accuracy is the top-1 of the
model's label ranking (`Paradigm.rank_labels`) on the test split: on the old classes' images, on
the new class's, and on all; each task's accuracy and the OOD AUROC (mean over the spec's OOD sets)
come from evaluation.checkpoint. Compute: optimizer steps and training seconds (train.py: summed
over summary.csv; extend.py: the fine-tune and imprinting, from the checkpoint's `added`).
Writes ROOT/EXTEND.md and ROOT/extend.csv; `evaluate.py report --extension ROOT` copies EXTEND.md
into REPORT.md (`report_section`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

from data.spec import SpecError, load_spec
from engine import training_steps
from evaluation.checkpoint import evaluate_checkpoint
from evaluation.tables import ReportTable, mean_std
from models import checkpoint as checkpoints
from models.checkpoint import CheckpointError
from utils import read_summary

ROWS = {  # folder -> label in the table
    "before": "before extension (old classes only)",
    "imprint": "imprinted, no fine-tune (--steps 0)",
    "extended": "extended: imprint + replay fine-tune",
    "naive": "naive: fine-tune on the new class only (--replay 0)",
    "full": "full retrain on the new label space",
}
SCORERS = ("max_logit", "knn")  # plus each model's default scorer (models/ood.py)


def compute(ckpt_path: Path) -> tuple[int, float]:
    """(optimizer steps, training seconds) that produced this checkpoint (without its parent's)."""
    state = checkpoints.read(ckpt_path)
    if state.get("added"):
        a = state["added"]
        return int(a.get("optimizer_steps") or 0), float(a.get("seconds") or 0) + float(a.get("imprint_seconds") or 0)
    args = state["args"]
    per_batch = len(training_steps(args.get("method", "pmg"), tuple(args.get("granularities", (8, 4, 2)))))
    rows = read_summary(ckpt_path.parent)
    return (sum(int(r["train_batches"]) for r in rows) * per_batch, sum(float(r["train_seconds"]) for r in rows))


def measure(ckpt_path: Path, spec, old_classes: list[str], cache_dir: Path | None, progress: bool = False) -> dict:
    """One row's numbers for one trial."""
    m, raw = evaluate_checkpoint(ckpt_path, spec, cache_dir=cache_dir, progress=progress)
    labels, top1 = raw["test"]["labels"], raw["test"]["top1"]

    def acc(keep):
        hits = [t == y for t, y in zip(top1, labels) if keep(y)]
        return float(np.mean(hits)) if hits else float("nan")

    rej = m["rejection"]
    sets = [s for s in rej if isinstance(rej[s], dict) and "max_logit" in rej[s]]
    default = rej.get("default")
    steps, seconds = compute(ckpt_path)
    out = {"old_acc": acc(lambda y: y in old_classes), "new_acc": acc(lambda y: y not in old_classes),
           "overall_acc": acc(lambda y: True), "optimizer_steps": steps, "train_seconds": seconds,
           "default_scorer": default, "classes": m["classes"], "added": m.get("added")}
    out |= {f"task_{t}": e["sets"]["test"]["accuracy"] for t, e in m["tasks"].items() if "test" in e.get("sets", {})}
    for s in (*SCORERS, *([default] if default else [])):
        out[f"auroc_{s}"] = float(np.mean([rej[n][s]["auroc"] for n in sets])) if sets else float("nan")
    if default:
        out["auroc_default"] = out[f"auroc_{default}"]
    return out


def read_times(trial: Path) -> dict[str, float]:
    f = trial / "times.tsv"
    if not f.is_file():
        return {}
    return {k: float(v) for k, v in (line.split("\t") for line in f.read_text().splitlines() if "\t" in line)}


def row_names(trial: Path) -> list[str]:
    """ROWS, then every other folder of the trial (a VARIANTS row of run/extend.sh), sorted."""
    extra = sorted(p.name for p in trial.iterdir() if p.is_dir() and p.name not in ROWS)
    return [*ROWS, *extra]


def row_label(row: str, results: dict[str, list[dict]]) -> str:
    """ROWS' label, or a variant's name with the flags its checkpoint records."""
    if row in ROWS:
        return ROWS[row]
    a = results[row][0].get("added") or {}
    size = f"share {a['share']:g}" if a.get("share") else f"{a.get('batches', '?')} batches"
    return f"variant {row}: --train {a.get('train')}, --replay {a.get('replay')}, --lr {a.get('lr')}, {size}"


def collect(root: Path, old_spec, spec, progress: bool = False) -> dict[str, list[dict]]:
    """row -> one dict per trial."""
    trials = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("exp"))
    if not trials:
        raise FileNotFoundError(f"{root}: no trial folders exp*/; run sh run/extend.sh first")
    old = old_spec.class_names
    results: dict[str, list[dict]] = {}
    for trial in trials:
        times = read_times(trial)
        for row in row_names(trial):
            found = sorted((trial / row).glob("**/best.pt"))
            if not found:
                continue
            r = measure(found[0], old_spec if row == "before" else spec, old, root / "cache", progress)
            r["wall_seconds"] = times.get(row, float("nan"))
            r["trial"] = trial.name
            results.setdefault(row, []).append(r)
    return results


def points(a: list[float], b: list[float]) -> float:
    """Mean difference a - b in accuracy points (x100)."""
    return 100 * (mean_std(a)[0] - mean_std(b)[0])


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    """The issue's three targets, met or not, with the numbers."""
    col = lambda row, k: [r[k] for r in results.get(row, [])]  # noqa: E731
    lines = []
    if "before" in results and "extended" in results:
        drop = round(-points(col("extended", "old_acc"), col("before", "old_acc")), 9) + 0.0  # + 0.0: never "-0.0"
        lines.append(f"- old-class accuracy drop ≤ 1 point: {drop:.1f} points (before {mean_std(col('before', 'old_acc'))[0]:.3f}, "
                     f"after {mean_std(col('extended', 'old_acc'))[0]:.3f}): **{'met' if drop <= 1 else 'not met'}**")
    if "full" in results and "extended" in results:
        d = points(col("extended", "overall_acc"), col("full", "overall_acc"))
        lines.append(f"- overall accuracy within 1 point of the full retrain: {d:+.1f} points "
                     f"(extended {mean_std(col('extended', 'overall_acc'))[0]:.3f}, full "
                     f"{mean_std(col('full', 'overall_acc'))[0]:.3f}): **{'met' if d >= -1 else 'not met'}**")
        for k, what in (("optimizer_steps", "optimizer steps"), ("train_seconds", "training time"),
                        ("wall_seconds", "command wall time")):
            full, ext = mean_std(col("full", k))[0], mean_std(col("extended", k))[0]
            if full and not math.isnan(full) and not math.isnan(ext):
                lines.append(f"- ≤ 25 % of the full retrain's compute, {what}: {ext:.0f} v {full:.0f} = "
                             f"{100 * ext / full:.1f} %: **{'met' if ext <= 0.25 * full else 'not met'}**")
    return lines


def table(results: dict[str, list[dict]], tasks: list[str]) -> ReportTable:
    cols = {"old-class acc": "old_acc", "new-class acc": "new_acc", "overall acc": "overall_acc",
            **{f"task {t}": f"task_{t}" for t in tasks},
            **{f"OOD AUROC {s}": f"auroc_{s}" for s in SCORERS}, "OOD AUROC default": "auroc_default",
            "optimizer steps": "optimizer_steps", "train s": "train_seconds", "wall s": "wall_seconds"}
    t = ReportTable("Adding a class: extension v full retrain", list(cols), no_bold=set(cols),
                    column_digits={"optimizer steps": 0, "train s": 0, "wall s": 0})
    for row in [*ROWS, *(r for r in results if r not in ROWS)]:
        if row in results:
            t.add(row_label(row, results), {c: [r.get(k, float("nan")) for r in results[row]] for c, k in cols.items()})
    return t


def write(root: Path, old_spec, spec, progress: bool = False) -> Path:
    results = collect(root, old_spec, spec, progress)
    added = [c for c in spec.class_names if c not in old_spec.class_names]
    n = max(len(v) for v in results.values())
    t = table(results, list(spec.tasks))
    defaults = sorted({r["default_scorer"] for rs in results.values() for r in rs if r.get("default_scorer")})
    md = [f"# Adding {', '.join(added)} to a trained model: extension v full retrain", "",
          f"{n} trial(s); old classes: {', '.join(old_spec.class_names)}; datasets {old_spec.root} (before) and "
          f"{spec.root} (every other row). Mean ± std over trials. Accuracy: top-1 on the test split; OOD AUROC: "
          f"mean over the OOD sets ({', '.join(spec.ood)}); 'default' is each model's own default scorer "
          f"({', '.join(defaults) or '—'}, chosen on val + ood_val). Steps and train s count only what produced "
          f"the row's model (an extension's parent is the 'before' row).", "", t.markdown(), "",
          "Targets (extended v before and v full retrain):", "", *verdicts(results), ""]
    (root / "EXTEND.md").write_text("\n".join(md))
    t.write_csv(root / "extend.csv")
    (root / "extend.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return root / "EXTEND.md"


def report_section(root: Path) -> list[str]:
    """ROOT/EXTEND.md (run/extend.sh's) as lines of a REPORT.md section: its headings one level down,
    and where and when it was written (it is not recomputed)."""
    f = Path(root) / "EXTEND.md"
    if not f.is_file():
        raise CheckpointError(f"{f}: not found; run 'ROOT={root} sh run/extend.sh' first, or leave out --extension")
    lines = [f"#{ln}" if ln.startswith("#") else ln for ln in f.read_text().splitlines()]
    when = datetime.fromtimestamp(f.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return [*lines[:1], "", f"*From `{f}`, written by `run/extend.sh` on {when}.*", *lines[1:], ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.extension", description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, type=Path, help="the experiment folder (ROOT/<trial>/<row>/)")
    ap.add_argument("--old-data", required=True, help="the dataset without the new class (the 'before' model's)")
    ap.add_argument("--data", required=True, help="the dataset with the new class")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        path = write(a.root, load_spec(a.old_data), load_spec(a.data), a.progress)
    except (SpecError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
