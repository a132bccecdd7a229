"""Benchmark of the deployed pipeline, one run, same images (not a test: it prints what it measured).

1. speed: the batch pipeline (`run_batch`: decode + transform + model + OOD score + top-2 +
   SQLite upsert) and the queue consumer's path (message batches of
   `pipeline.queue_defaults.MESSAGE_BATCH`, the consumer's default, and of 32, through the same
   `predicted` as one batch, upsert per batch, no broker; `--sweep`: also in parts) vs the bare
   model forward on the same images decoded beforehand: img/s, ms/image and the ratio to the
   forward (target >= 0.85x), at 64 px and 224 px model input, for the embedded 96 px files and
   for phone-size photos (the same images re-encoded at 1600 x 1200, made here in a temporary
   folder). `before` is a baseline layout for comparison (2 DataLoader worker processes,
   full-size JPEG decode). The bound row is what the cores allow at best: each image costs at
   least its 1-thread decode + its 1-thread forward of CPU time (both measured here), spread
   over every core with none idle.
   Interleaved, median of --repeats. `--checkpoint` measures a given (deployed) model instead of
   the tiny one this script trains;
2. efficiency-centric (1 model, 1 table) vs task-centric (2 and 3 models, one table each):
   wall time and CPU time per image;
3. the inspectors' query ("dirty or damaged, captured on day D") on the one table vs the join of
   the task-centric tables (rows replicated over --days days so the index matters).

    python bench/bench_pipeline.py                       # trains tiny models itself (~1 min)
    python bench/bench_pipeline.py --only speed --sweep  # also every decode configuration
    python bench/bench_pipeline.py --images 2000 --crop 64 --workers 2
    python bench/bench_pipeline.py --only speed --checkpoint artifacts/uni/exp1/best.pt
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import data.loading
from data.loading import ImageSet, collate_skip_bad
from models import checkpoint as checkpoints
from pipeline.batch import (cores, decode_threads, default_streams, default_torch_threads, default_workers,
                            predicted, run_batch)
from pipeline.model import Predictor
from pipeline.sources import list_source
from pipeline.queue_defaults import MESSAGE_BATCH
from pipeline.table import PredictionTable

ROOT = Path(__file__).resolve().parents[1]

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


def train_models(work: Path, args, runs=RUNS) -> dict[str, Path]:
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
    for paradigm, task in runs:
        subprocess.run([sys.executable, "train.py", "--data", str(work / "data"), "--paradigm", paradigm,
                        *(["--task", task] if task else []), "--artifacts", str(work / "runs"), *flags],
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


def decoded(pred: Predictor, items, batch: int, pixels: bool = False) -> list[torch.Tensor]:
    """Float batches (the model's input), or the uint8 pixel batches the pipeline decodes."""
    ds = ImageSet([(it.path, i) for i, it in enumerate(items)], pred.pixels() if pixels else pred.transform())
    return [collate_skip_bad([ds[j] for j in range(i, min(i + batch, len(ds)))])[0] for i in range(0, len(ds), batch)]


def decode_only(pred: Predictor, items, batch: int) -> float:
    """images/s of decode + transform alone (to the pipeline's uint8 pixels), in this thread."""
    t = time.perf_counter()
    decoded(pred, items, batch, pixels=True)
    return len(items) / (time.perf_counter() - t)


def bare_forward(pred: Predictor, items, batch: int) -> float:
    """images/s of model(x) alone, on tensors decoded beforehand."""
    xs = decoded(pred, items, batch)
    forward = getattr(pred, "forward", None) or pred.logits  # (logits, features) since the feature detectors
    forward(xs[0])  # warm-up
    t = time.perf_counter()
    for x in xs:
        forward(x)
    return len(items) / (time.perf_counter() - t)


# --- 1. speed ------------------------------------------------------------------------------------
def embedded_files(work: Path, n: int) -> list[Path]:
    """`n` images of the embedded dataset (data.generate at 96 px, test split and special sets)."""
    from data.generate import generate
    per_class = max(1, -(-n // 10))
    generate(work / "embedded", seed=0, size=96, train=1, val=1, test=per_class, ext=1, ood=1, multilabel=1,
             workers=min(2, cores()), montage=False)
    return sorted((work / "embedded" / "test").rglob("*.jpg"))[:n]


def copy_as(files: list[Path], folder: Path, size: tuple[int, int] | None) -> Path:
    """The files into one dated folder tree; `size`: re-encoded at that size (phone photos)."""
    stamp = time.mktime(time.strptime(DAY + " 12", "%Y-%m-%d %H"))
    for i, f in enumerate(files):
        p = folder / f"{i // 500}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        if size is None:
            shutil.copyfile(f, p)
        else:
            Image.open(f).convert("RGB").resize(size, Image.BICUBIC).save(p, quality=90)
        os.utime(p, (stamp, stamp))
    return folder


def at_crop(ckpt: Path, crop: int, out: Path) -> Path:
    """The same weights served at another input size (PMG pools adaptively): resize = 9/8 crop,
    the quick profile's 72 -> 64 ratio."""
    state = checkpoints.read(ckpt)
    state["args"] = {**state["args"], "crop": crop, "resize": round(crop * 9 / 8)}
    checkpoints.save(state, out)
    return out


@contextlib.contextmanager
def full_decode():
    """The baseline decoder without DCT scaling: every JPEG decoded at its stored size."""
    saved = data.loading.decode_size
    data.loading.decode_size = lambda transform: None
    try:
        yield
    finally:
        data.loading.decode_size = saved


def consumer_path(pred: Predictor, table: PredictionTable, items, batch: int = MESSAGE_BATCH, part: int | None = None,
                  streams: int | None = None) -> float:
    """img/s of what a queue consumer does per message batch (pipeline/streams.Consumer.process
    without Redis): the batch through `predicted` (in-process decoding, in parts of `part` images,
    default one per stream), upsert."""
    t = time.perf_counter()
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        table.upsert([r for _, rows in predicted(pred, chunk, part or len(chunk), workers=0,
                                                 streams=streams) for r in rows])
    return len(items) / (time.perf_counter() - t)


def speed(work: Path, ckpt: Path, args) -> None:
    files = embedded_files(work, args.speed_images)
    sets = {"embedded 96 px": copy_as(files, work / "speed_small", None),
            "phone 1600x1200": copy_as(files[:args.phone_images], work / "speed_phone", (1600, 1200))}
    load = os.getloadavg()
    base = torch.get_num_threads()
    print(f"## speed: {cores()} cores, torch threads {base} (torch's default), pipeline default: "
          f"{default_workers()} worker processes, {default_streams()} stream(s) at "
          f"{default_torch_threads()} torch thread(s) (1 stream: {decode_threads()} decode thread(s)); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    n = cores()
    default = (default_streams(), default_torch_threads())
    mark = lambda label, st, th: label + (" (default)" if (st, th) == default else "")  # noqa: E731
    modes = {f"bare forward ({base} torch threads)": dict(forward=True),
             mark(f"batch pipeline, 1 stream: decode threads beside a {n}-thread forward", 1, n):
                 dict(torch_threads=n, streams=1),
             "batch pipeline, 1 stream, decode and forward take turns (ahead 0)": dict(torch_threads=n, streams=1,
                                                                                       ahead=0),
             "batch pipeline, 1 stream, decode 1 batch ahead": dict(torch_threads=n, streams=1, ahead=1),
             mark(f"batch pipeline, {n} streams x 1 torch thread", n, 1): dict(torch_threads=1, streams=n),
             f"batch pipeline, {2 * n} streams x 1 torch thread": dict(torch_threads=1, streams=2 * n),
             f"batch pipeline (before: 2 worker processes, full decode, {base} torch threads)":
                 dict(workers=2, full=True),
             mark(f"queue consumer (message batches of {MESSAGE_BATCH}), 1 stream", 1, n):
                 dict(consumer=True, torch_threads=n, streams=1),
             mark(f"queue consumer (message batches of {MESSAGE_BATCH}), {n} streams x 1 torch thread", n, 1):
                 dict(consumer=True, torch_threads=1, streams=n),
             f"queue consumer (message batches of 32, before), {n} streams x 1 torch thread":
                 dict(consumer=True, torch_threads=1, streams=n, messages=32),
             "bare forward (1 torch thread)": dict(forward=True, torch_threads=1),
             "decode + transform alone (1 thread)": dict(decode=True)}
    now = default[1]
    if args.sweep:
        for part in (8, 16):
            modes[f"queue consumer, 1 stream, parts of {part}"] = dict(consumer=True, part=part, streams=1,
                                                                        torch_threads=n)
        for t in sorted({1, base}):
            modes.update({f"batch, 0 workers, 1 decode thread, {t} torch threads": dict(workers=0, threads=1, streams=1,
                                                                                          torch_threads=t),
                          f"batch, 0 workers, 2 decode threads, {t} torch threads": dict(workers=0, threads=2, streams=1,
                                                                                           torch_threads=t),
                          f"batch, 1 worker process, {t} torch threads": dict(workers=1, torch_threads=t),
                          f"batch, 2 worker processes, {t} torch threads": dict(workers=2, torch_threads=t)})
        modes["batch, default but full decode"] = dict(full=True, torch_threads=now)
    print(f"\n| images | input | mode | img/s | ms/img | vs forward ({base} threads) | vs the faster forward |\n"
          f"|---|---|---|---|---|---|---|")
    for crop in args.speed_crops:
        c = at_crop(ckpt, crop, work / f"uni_{crop}.pt")
        pred = Predictor.load(c)
        pred.resolve_threshold(0.0)
        for label, folder in sets.items():
            items = list_source(folder)
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.repeats):
                for m, how in modes.items():  # interleaved: every mode once per round
                    db = work / f"speed_{crop}_{r}.db"
                    torch.set_num_threads(how.get("torch_threads", base))
                    if how.get("forward"):
                        times[m].append(bare_forward(pred, items, args.batch_size))
                    elif how.get("decode"):
                        times[m].append(decode_only(pred, items, args.batch_size))
                    elif how.get("consumer"):
                        times[m].append(consumer_path(pred, PredictionTable(str(db), "consumer"), items,
                                                      how.get("messages", MESSAGE_BATCH), how.get("part"),
                                                      how.get("streams")))
                    else:
                        with full_decode() if how.get("full") else contextlib.nullcontext():
                            s = run_batch(pred, PredictionTable(str(db)), items, args.batch_size,
                                          how.get("workers"), False, threads=how.get("threads"), ahead=how.get("ahead"),
                                          streams=how.get("streams"))
                        times[m].append(s["images"] / s["seconds"])
                    torch.set_num_threads(base)
            fwd = statistics.median(times[f"bare forward ({base} torch threads)"])
            best = max(statistics.median(times[m]) for m, how in modes.items() if how.get("forward"))
            rates = {m: statistics.median(v) for m, v in times.items()}
            one = 1 / rates["bare forward (1 torch thread)"] + 1 / rates["decode + transform alone (1 thread)"]
            rates[f"bound: {cores()} cores never idle, (1-thread forward + 1-thread decode) CPU s per image"] = \
                cores() / one
            for m, v in rates.items():
                print(f"| {label} ({len(items)}) | {crop} px | {m} | {v:.0f} | {1000 / v:.2f} | {v / fwd:.2f}x | "
                      f"{v / best:.2f}x |", flush=True)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end (median of {args.repeats} interleaved runs)")


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
    ap.add_argument("--only", choices=["speed", "systems"], help="run one part (default: both)")
    ap.add_argument("--speed-images", type=int, default=500, help="embedded 96 px files in the speed part")
    ap.add_argument("--phone-images", type=int, default=200, help="of those, re-encoded at 1600x1200")
    ap.add_argument("--speed-crops", type=int, nargs="+", default=[64, 224], help="model input sides")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode (median)")
    ap.add_argument("--sweep", action="store_true", help="also time every decode configuration")
    ap.add_argument("--checkpoint", help="the speed part only, on this checkpoint (e.g. a deployed model) instead "
                                         "of the tiny model the script trains")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        if args.checkpoint:
            return speed(work, Path(args.checkpoint), args)
        ckpts = train_models(work, args, RUNS[:1] if args.only == "speed" else RUNS)
        if args.only != "systems":
            speed(work, ckpts["uni"], args)
        if args.only == "speed":
            return
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
