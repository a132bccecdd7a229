"""Benchmark of the deployed pipeline, one run, same images (not a test: it prints what it measured).

1. batch mode (decode workers + OOD + top-2 + SQLite upserts) vs the bare model forward on
   pre-decoded tensors: images/s (target: the pipeline at most 15% slower);
2. efficiency-centric (1 model, 1 table) vs task-centric (2 and 3 models, one table each):
   wall time and CPU time per image;
3. the inspectors' query ("dirty or damaged, captured on day D") on the one table vs the join of
   the task-centric tables (rows replicated over --days days so the index matters).

    python bench/bench_pipeline.py                       # trains tiny models itself (~1 min)
    python bench/bench_pipeline.py --images 2000 --crop 64 --workers 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data.loading import ImageSet, collate_skip_bad  # noqa: E402
from pipeline.batch import run_batch  # noqa: E402
from pipeline.model import Predictor  # noqa: E402
from pipeline.sources import list_source  # noqa: E402
from pipeline.table import PredictionTable  # noqa: E402

CLASSES = {"normal": (90, 90, 90), "defect": (200, 40, 40), "dirt": (120, 90, 30), "bubble": (60, 160, 220)}
SPEC = """name: bench
classes: {normal: 0_NORMAL, defect: 1_DEFECT, dirt: 2_DIRT, bubble: 3_BUBBLE}
splits: {train: train, val: val, test: test}
tasks: {defect: [normal, defect], dirt: [normal, dirt], bubble: [normal, bubble]}
"""
RUNS = [("uni", None), ("task", "defect"), ("task", "dirt"), ("task", "bubble")]
DAY = "2026-11-20"


def noisy(rng, colour, size):
    a = np.clip(np.array(colour, np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def train_models(work: Path, args) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 8), ("test", 2)):
        for k, (c, col) in enumerate(CLASSES.items()):
            d = work / "data" / split / f"{k}_{c.upper()}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noisy(rng, col, args.size).save(d / f"{i}.jpg", quality=90)
    (work / "data" / "dataset.yaml").write_text(SPEC)
    flags = ["--backbone", args.backbone, "--pretrained", "none", "--resize", str(args.crop + 8), "--crop",
             str(args.crop), "--branch-mid", "128", "--branch-out", "256", "--hidden", "128", "--epochs", "1",
             "--batch-size", "16", "--workers", "0", "--no-progress", "--profile", "quick", "--device", "cpu"]
    out = {}
    for paradigm, task in RUNS:
        subprocess.run([sys.executable, "train.py", "--data", str(work / "data"), "--paradigm", paradigm,
                        *(["--task", task] if task else []), "--output-dir", str(work / "runs"), *flags],
                       cwd=ROOT, check=True, capture_output=True)
        name = f"{paradigm}_{task}" if task else paradigm
        out[name] = work / "runs" / name / "exp1" / "best.pt"
    return out


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(1)
    cols = list(CLASSES.values())
    stamp = time.mktime(time.strptime(DAY + " 12", "%Y-%m-%d %H"))
    for i in range(n):
        p = folder / f"{i // 500}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        noisy(rng, cols[i % len(cols)], size).save(p, quality=85)
        os.utime(p, (stamp, stamp))


def bare_forward(pred: Predictor, items, batch: int) -> float:
    """images/s of model(x) alone, on tensors decoded beforehand."""
    ds = ImageSet([(it.path, i) for i, it in enumerate(items)], pred.transform())
    xs = [collate_skip_bad([ds[j] for j in range(i, min(i + batch, len(ds)))])[0] for i in range(0, len(ds), batch)]
    pred.logits(xs[0])  # warm-up
    t = time.perf_counter()
    for x in xs:
        pred.logits(x)
    return len(items) / (time.perf_counter() - t)


def timed_pipeline(ckpts, items, db: Path, batch: int, workers: int) -> tuple[float, float]:
    """(wall s, CPU s of this process and its finished children) to run each model into its own table."""
    usage = lambda: sum(os.times()[:4])  # noqa: E731
    c0, t0 = usage(), time.perf_counter()
    for name, ckpt in ckpts:
        pred = Predictor.load(ckpt)
        pred.resolve_threshold()
        run_batch(pred, PredictionTable(str(db), f"predictions_{name}"), items, batch, workers, progress=False)
    return time.perf_counter() - t0, usage() - c0


def replicate(db: Path, names: list[str], days: int) -> None:
    """Copy each table's rows onto `days` earlier days, so a query must pick one day out of many."""
    t = PredictionTable(str(db))
    for n in names:
        cols = "image_id, model_version, model_name, source, captured_date, ood_score, ood_threshold, is_ood, " \
               "top1_label, top1_prob, top2_label, top2_prob, status, error, processed_at"
        for d in range(1, days):
            t.conn.execute(f"INSERT OR IGNORE INTO predictions_{n} ({cols}) SELECT image_id || '#{d}', "
                           f"model_version, model_name, source, date(captured_date, '-{d} day'), ood_score, "
                           f"ood_threshold, is_ood, top1_label, top1_prob, top2_label, top2_prob, status, error, "
                           f"processed_at FROM predictions_{n} WHERE captured_date = '{DAY}'")
        t.conn.commit()
    t.conn.execute("ANALYZE")


def query_time(db: Path, sql: str, params, reps: int) -> tuple[float, int]:
    t = PredictionTable(str(db))
    n = len(t.conn.execute(sql, params).fetchall())
    start = time.perf_counter()
    for _ in range(reps):
        t.conn.execute(sql, params).fetchall()
    return (time.perf_counter() - start) / reps * 1000, n


def join_sql(tasks: list[str]) -> str:
    """Task-centric: one table per task, joined on image id; flagged if any task's model says so."""
    first = f"predictions_task_{tasks[0]}"
    joins = " ".join(f"JOIN predictions_task_{t} USING (image_id)" for t in tasks[1:])
    cond = " OR ".join(f"(predictions_task_{t}.status = 'ok' AND predictions_task_{t}.top1_label = '{t}')"
                       for t in tasks if t in ("defect", "dirt"))
    return f"SELECT image_id FROM {first} {joins} WHERE {first}.captured_date = ? AND ({cond})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96, help="stored image side (decoded, then resized to --crop)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        ckpts = train_models(work, args)
        make_images(work / "images", args.images, args.size)
        items = list_source(work / "images")
        pred = Predictor.load(ckpts["uni"])
        pred.resolve_threshold()
        print(f"{len(items)} images {args.size}px -> {args.crop}px, {args.backbone} PMG, batch {args.batch_size}, "
              f"{args.workers} decode workers, torch threads {torch.get_num_threads()}, CPU")
        fwd = bare_forward(pred, items, args.batch_size)
        s = run_batch(pred, PredictionTable(str(work / "a.db")), items, args.batch_size, args.workers, progress=False)
        print(f"\n| mode | images/s |\n|---|---|\n| bare model forward | {fwd:.0f} |\n"
              f"| batch pipeline (decode+OOD+top-2+upsert) | {s['images_per_s']:.0f} "
              f"({(s['images_per_s'] / fwd - 1) * 100:+.0f}% vs forward) |")
        print("\n| system | wall s | wall ms/img | CPU ms/img |\n|---|---|---|---|")
        dbs = {}
        for label, names in (("efficiency-centric, 1 model / 1 table", ["uni"]),
                             ("task-centric, 2 models / 2 tables", ["task_defect", "task_dirt"]),
                             ("task-centric, 3 models / 3 tables", ["task_defect", "task_dirt", "task_bubble"])):
            dbs[len(names)] = db = work / f"system{len(names)}.db"
            wall, cpu = timed_pipeline([(n, ckpts[n]) for n in names], items, db, args.batch_size, 0)
            print(f"| {label} | {wall:.1f} | {wall / len(items) * 1000:.2f} | {cpu / len(items) * 1000:.2f} |")
        replicate(dbs[1], ["uni"], args.days)
        replicate(dbs[3], ["task_defect", "task_dirt", "task_bubble"], args.days)
        one = ("SELECT image_id FROM predictions_uni WHERE captured_date = ? AND status = 'ok' AND "
               "(top1_label IN ('dirt', 'defect') OR top2_label IN ('dirt', 'defect'))")
        print(f"\n| inspectors' query, 1 day of {args.days} | ms | rows |\n|---|---|---|")
        for label, db, sql in (("one table (efficiency-centric)", dbs[1], one),
                               ("join of 2 tables (task-centric)", dbs[3], join_sql(["defect", "dirt"])),
                               ("join of 3 tables (task-centric)", dbs[3], join_sql(["defect", "dirt", "bubble"]))):
            ms, n = query_time(db, sql, (DAY,), args.reps)
            print(f"| {label} | {ms:.2f} | {n} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
