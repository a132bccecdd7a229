"""Benchmark of the deployed pipeline, one run, same images (not a test: it prints what it measured).

Every model is served as the pipeline serves it: a trained checkpoint released into a bundle
(models.release) and loaded by `Predictor` on ONNX Runtime, one session per thread count.

1. speed: the batch pipeline (`run_batch`: decode + resize/crop + model + OOD score + top-2 +
   SQLite upsert) and the queue consumer's path (message batches of
   `pipeline.queue_defaults.MESSAGE_BATCH`, the consumer's default, and of 32, through the same
   `predicted` as one batch, upsert per batch, no broker; `--sweep`: also in parts) vs the bare
   forward of the same ONNX Runtime session on images decoded and normalised beforehand: img/s,
   ms/image and the ratio to the forward (target >= 0.85x), at 64 px and 224 px model input, for
   the embedded 96 px files and for phone-size photos (the same images re-encoded at 1600 x 1200,
   made here in a temporary folder). The layouts: one stream with decode threads beside a
   forward on every core, N streams of 1 inference thread, and 2 decode processes (the large-machine
   layout). The bound row is what the cores allow at best: each image costs at least its 1-thread
   decode + its 1-thread forward of CPU time (both measured here), spread over every core with
   none idle. Interleaved, median of --repeats. `--checkpoint` measures a given (deployed) model
   instead of the tiny one this script trains (released here at each --speed-crops size; its
   training data must be present); `--bundle` an already released bundle, at its own crop;
2. efficiency-centric (1 model, 1 table) vs task-centric (2 and 3 models, one table each):
   wall time and CPU time per image, loading each bundle included;
3. the inspectors' query ("dirty or damaged, captured on day D") on the one table vs the join of
   the task-centric tables (rows replicated over --days days so the index matters).

    python bench/bench_pipeline.py                       # trains and releases tiny models itself
    python bench/bench_pipeline.py --only speed --sweep  # also every decode configuration
    python bench/bench_pipeline.py --images 2000 --crop 64 --workers 2
    python bench/bench_pipeline.py --only speed --checkpoint artifacts/uni/exp1/best.pt
    python bench/bench_pipeline.py --only speed --bundle bundles/0123456789abcdef
"""
from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.batch import (Decoder, collate, cores, decode_threads, default_streams, default_threads,
                            default_workers, predicted, run_batch)
from pipeline.bundle import Bundle
from pipeline.model import Predictor
from pipeline.pixels import Pixels
from pipeline.sources import list_source
from pipeline.queue_defaults import MESSAGE_BATCH
from pipeline.table import PredictionTable
from provenance import cpu_model

ROOT = Path(__file__).resolve().parents[1]
# torch is imported only where a checkpoint is read or released: decode processes (spawned, so they
# import this module again) then start as the pipeline's do.

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


def released(ckpt: Path, out: Path) -> Path:
    """The bundle of `ckpt` (released into `out` now, or found there): what the pipeline serves."""
    from models.release import release
    return release(ckpt, None, out, device="cpu")[0]


def bundle_crop(bundle: Path) -> int:
    return Pixels.from_manifest(Bundle.load(bundle).manifest).crop


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(1)
    cols = list(CLASSES.values())
    stamp = time.mktime(time.strptime(DAY + " 12", "%Y-%m-%d %H"))
    for i in range(n):
        p = folder / f"{i // 500}" / f"{i:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        noisy(rng, cols[i % len(cols)], size).save(p, quality=85)
        os.utime(p, (stamp, stamp))


def decoded(pred: Predictor, items, batch: int) -> list[np.ndarray]:
    """The uint8 pixel batches (N, 3, crop, crop) the pipeline decodes, decoded in this thread."""
    images = Decoder([it.path for it in items], pred.pixels)
    return [collate([images[j] for j in range(i, min(i + batch, len(images)))])[0]
            for i in range(0, len(images), batch)]


def decode_only(pred: Predictor, items, batch: int) -> float:
    """images/s of decode + resize/crop alone (to the pipeline's uint8 pixels), in this thread."""
    t = time.perf_counter()
    decoded(pred, items, batch)
    return len(items) / (time.perf_counter() - t)


def bare_forward(pred: Predictor, items, batch: int) -> float:
    """images/s of the session's forward alone, on batches decoded and normalised beforehand."""
    xs = [pred.pixels.normalize(x) for x in decoded(pred, items, batch)]
    pred.forward(xs[0])  # warm-up
    t = time.perf_counter()
    for x in xs:
        pred.forward(x)
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
    the quick profile's 72 -> 64 ratio. The copy keeps the training data's path, so it releases."""
    from models import checkpoint as checkpoints
    state = checkpoints.read(ckpt)
    state["args"] = {**state["args"], "crop": crop, "resize": round(crop * 9 / 8)}
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.save(state, out)
    return out


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


def _forward_alone(bundle: str, batches: list, ready, go) -> float:
    """In a spawned process: images/s of a 1-thread session's forward on `batches`, timed from `go`."""
    pred = Predictor.load(bundle, threads=1)
    pred.forward(batches[0])  # warm-up
    ready.wait()
    go.wait()
    t = time.perf_counter()
    for x in batches:
        pred.forward(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - t)


def parallel_forward(pred: Predictor, items, batch: int) -> float:
    """images/s of one 1-thread session per core, each in its own process, all running the forward
    at once on the same pre-decoded batches: what the cores give the forward when every one is busy
    (less than cores x the 1-thread rate where cores share caches, memory bandwidth or a host core)."""
    import multiprocessing
    xs = [pred.pixels.normalize(x) for x in decoded(pred, items, batch)]
    n = cores()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(n) as pool:
        ready, go = manager.Barrier(n + 1), manager.Event()
        runs = [pool.apply_async(_forward_alone, (str(pred.bundle.path), xs, ready, go)) for _ in range(n)]
        ready.wait()
        go.set()
        return sum(r.get() for r in runs)


def speed_modes(sweep: bool) -> dict[str, dict]:
    """{label: how}: `threads` is the session's intra-op threads (default every core)."""
    n = cores()
    default = (default_streams(), default_threads())
    mark = lambda label, st, th: label + (" (default)" if (st, th) == default else "")  # noqa: E731
    procs = default_threads(workers=2)
    modes = {f"bare forward ({n} inference threads)": dict(forward=True),
             mark(f"batch pipeline, 1 stream: decode threads beside a {n}-thread forward", 1, n): dict(streams=1),
             "batch pipeline, 1 stream, decode and forward take turns (ahead 0)": dict(streams=1, ahead=0),
             "batch pipeline, 1 stream, decode 1 batch ahead": dict(streams=1, ahead=1),
             mark(f"batch pipeline, {n} streams x 1 inference thread", n, 1): dict(threads=1, streams=n),
             mark(f"batch pipeline, {2 * n} streams x 1 inference thread", 2 * n, 1): dict(threads=1, streams=2 * n),
             f"batch pipeline, 2 decode processes beside a {procs}-thread forward": dict(workers=2, threads=procs),
             mark(f"queue consumer (message batches of {MESSAGE_BATCH}), 1 stream", 1, n):
                 dict(consumer=True, streams=1),
             mark(f"queue consumer (message batches of {MESSAGE_BATCH}), {n} streams x 1 inference thread", n, 1):
                 dict(consumer=True, threads=1, streams=n),
             mark(f"queue consumer (message batches of {MESSAGE_BATCH}), {2 * n} streams x 1 inference thread",
                  2 * n, 1): dict(consumer=True, threads=1, streams=2 * n),
             f"queue consumer (message batches of 32), {n} streams x 1 inference thread":
                 dict(consumer=True, threads=1, streams=n, messages=32),
             "bare forward (1 inference thread)": dict(forward=True, threads=1),
             f"bare forward, {n} processes x 1 inference thread at once": dict(parallel=True, threads=1),
             "decode + resize/crop alone (1 thread)": dict(decode=True)}
    if sweep:
        for part in (8, 16):
            modes[f"queue consumer, 1 stream, parts of {part}"] = dict(consumer=True, part=part, streams=1)
        for t in sorted({1, n}):
            threads = f"{t} inference thread{'s' if t > 1 else ''}"
            modes.update({f"batch, 0 workers, 1 decode thread, {threads}": dict(workers=0, decoders=1, streams=1,
                                                                                 threads=t),
                          f"batch, 0 workers, 2 decode threads, {threads}": dict(workers=0, decoders=2, streams=1,
                                                                                  threads=t),
                          f"batch, 1 decode process, {threads}": dict(workers=1, threads=t),
                          f"batch, 2 decode processes, {threads}": dict(workers=2, threads=t)})
    return modes


def timed_mode(pred: Predictor, how: dict, items, batch: int, db: Path) -> float:
    """images/s of one mode on `items`."""
    if how.get("parallel"):
        return parallel_forward(pred, items, batch)
    if how.get("forward"):
        return bare_forward(pred, items, batch)
    if how.get("decode"):
        return decode_only(pred, items, batch)
    if how.get("consumer"):
        return consumer_path(pred, PredictionTable(str(db), "consumer"), items, how.get("messages", MESSAGE_BATCH),
                             how.get("part"), how.get("streams"))
    s = run_batch(pred, PredictionTable(str(db)), items, batch, how.get("workers", 0), False,
                  threads=how.get("decoders"), ahead=how.get("ahead"), streams=how.get("streams"))
    return s["images"] / s["seconds"]


def speed(work: Path, bundles: dict[int, Path], args) -> None:
    """The speed part (module doc) on `bundles` {model input side: bundle folder}."""
    files = embedded_files(work, args.speed_images)
    sets = {"embedded 96 px": copy_as(files, work / "speed_small", None),
            "phone 1600x1200": copy_as(files[:args.phone_images], work / "speed_phone", (1600, 1200))}
    n = cores()
    load = os.getloadavg()
    print(f"## speed: {cpu_model()}, {n} cores; pipeline default: {default_workers()} decode processes, "
          f"{default_streams()} stream(s) at {default_threads()} inference thread(s) (1 stream: "
          f"{decode_threads()} decode thread(s)); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    modes = speed_modes(args.sweep)
    forward = next(iter(modes))
    print(f"\n| images | input | mode | img/s | ms/img | vs forward ({n} threads) | vs the faster forward |\n"
          f"|---|---|---|---|---|---|---|")
    for crop, bundle in bundles.items():
        sessions = {t: Predictor.load(bundle, threads=t) for t in {how.get("threads", n) for how in modes.values()}}
        for label, folder in sets.items():
            items = list_source(folder)
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.repeats):
                for m, how in modes.items():  # interleaved: every mode once per round
                    times[m].append(timed_mode(sessions[how.get("threads", n)], how, items, args.batch_size,
                                               work / f"speed_{crop}_{r}.db"))
            rates = {m: statistics.median(v) for m, v in times.items()}
            fwd = rates[forward]
            best = max(rates[m] for m, how in modes.items() if how.get("forward") or how.get("parallel"))
            fwd1, dec1 = rates["bare forward (1 inference thread)"], rates["decode + resize/crop alone (1 thread)"]
            rates[f"bound: {n} cores never idle, (1-thread forward + 1-thread decode) CPU s per image"] = \
                n / (1 / fwd1 + 1 / dec1)
            par = rates[f"bare forward, {n} processes x 1 inference thread at once"]
            slow = n * fwd1 / par  # how much slower a core works when every core is busy
            rates[f"bound with the measured all-cores slowdown ({slow:.2f}x): forward at the {n}-process rate, "
                  f"decode {slow:.2f}x its 1-thread cost"] = 1 / (1 / par + slow / (n * dec1))
            for m, v in rates.items():
                print(f"| {label} ({len(items)}) | {crop} px | {m} | {v:.0f} | {1000 / v:.2f} | {v / fwd:.2f}x | "
                      f"{v / best:.2f}x |", flush=True)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end (median of {args.repeats} interleaved runs)")


def timed_pipeline(bundles, items, db: Path, batch: int, workers: int | None) -> tuple[float, float]:
    """(wall s, CPU s of this process and its finished children) to load each bundle and run it
    into its own table, as `python -m pipeline predict` does (its default threads for `workers`)."""
    usage = lambda: sum(os.times()[:4])  # noqa: E731
    c0, t0 = usage(), time.perf_counter()
    for name, bundle in bundles:
        pred = Predictor.load(bundle, threads=default_threads(workers))
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


def systems(work: Path, bundles: dict[str, Path], args) -> None:
    """Parts 2 and 3 (module doc) on the released tiny models."""
    make_images(work / "images", args.images, args.size)
    items = list_source(work / "images")
    pred = Predictor.load(bundles["uni"], threads=cores())
    workers = default_workers() if args.workers is None else args.workers
    print(f"\n{len(items)} images {args.size}px -> {args.crop}px, {args.backbone} PMG, batch {args.batch_size}, "
          f"{workers} decode processes, {default_threads(workers)} inference thread(s), CPU ({cpu_model()}, "
          f"{cores()} cores)")
    fwd = bare_forward(pred, items, args.batch_size)
    s = run_batch(Predictor.load(bundles["uni"], threads=default_threads(workers)), PredictionTable(str(work / "a.db")),
                  items, args.batch_size, workers, progress=False)
    print(f"\n| mode | images/s |\n|---|---|\n| bare model forward ({cores()} inference threads) | {fwd:.0f} |\n"
          f"| batch pipeline (decode+OOD+top-2+upsert) | {s['images_per_s']:.0f} "
          f"({(s['images_per_s'] / fwd - 1) * 100:+.0f}% vs forward) |")
    print("\n| system | wall s | wall ms/img | CPU ms/img |\n|---|---|---|---|")
    dbs = {}
    for label, names in (("efficiency-centric, 1 model / 1 table", ["uni"]),
                         ("task-centric, 2 models / 2 tables", ["task_defect", "task_dirt"]),
                         ("task-centric, 3 models / 3 tables", ["task_defect", "task_dirt", "task_bubble"])):
        dbs[len(names)] = db = work / f"system{len(names)}.db"
        wall, cpu = timed_pipeline([(n, bundles[n]) for n in names], items, db, args.batch_size, 0)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96, help="stored image side (decoded, then resized to --crop)")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, help="decode processes of the pipeline-vs-forward line of the systems "
                                                "part (default: the pipeline's, pipeline.batch.default_workers)")
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--only", choices=["speed", "systems"], help="run one part (default: both)")
    ap.add_argument("--speed-images", type=int, default=500, help="embedded 96 px files in the speed part")
    ap.add_argument("--phone-images", type=int, default=200, help="of those, re-encoded at 1600x1200")
    ap.add_argument("--speed-crops", type=int, nargs="+", default=[64, 224], help="model input sides")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode (median)")
    ap.add_argument("--sweep", action="store_true", help="also time every decode configuration")
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help="the speed part only, on this checkpoint (e.g. a deployed model) instead "
                                            "of the tiny model the script trains; released here at each "
                                            "--speed-crops size (its training data must be present)")
    model.add_argument("--bundle", help="the speed part only, on this released bundle at its own crop")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        if args.bundle:
            return speed(work, {bundle_crop(Path(args.bundle)): Path(args.bundle)}, args)
        if args.checkpoint:
            ckpts = {"uni": Path(args.checkpoint)}
        else:
            ckpts = train_models(work, args, RUNS[:1] if args.only == "speed" else RUNS)
        if args.checkpoint or args.only != "systems":
            speed(work, {c: released(at_crop(ckpts["uni"], c, work / f"uni_{c}" / "best.pt"), work / "bundles")
                         for c in args.speed_crops}, args)
        if args.checkpoint or args.only == "speed":
            return
        systems(work, {name: released(c, work / "bundles") for name, c in ckpts.items()}, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
