"""Serving from a checkpoint (before: torch) v from its release bundle (after: ONNX Runtime, no
torch), each through its own `python -m pipeline` as a subprocess, side by side in one run (not a
test: it prints what it measured).

    python bench/bench_bundle.py --checkpoint CKPT --baseline DIR [--images 400] [--crops 64 224] [--repeats 5]

`--baseline DIR` is a checkout of the commit before bundles (`git worktree add DIR <commit>`), run
with this Python and cwd=DIR as `python -m pipeline predict --checkpoint CKPT ...`; it writes
`<ckpt>.detectors.pt` and `.threshold.json` beside the checkpoint at first use, so it serves a
copy in a work folder and one untimed run fits them. The after side is this checkout's
`python -m pipeline predict --bundle B ...` on the bundle released here from the same checkpoint
(models.release; its training data must be present). Without --baseline only the after side runs.
Both sides run at their CLI's default streams and threads, with --device cpu.

- cold start: wall seconds from process start to exit of `predict` on one image (its row written)
  and of `consume --exit-when-empty` on one queued message (a throwaway `redis-server` on a free
  port; skipped with the reason when there is none), at the checkpoint's own crop; also the after
  side's `predict` in a process where torch cannot be imported, which must work;
- throughput: `images_per_s` of predict's JSON summary on --images copies of the checkpoint's
  test split, at each --crops model input (the weights re-cropped as bench_pipeline.at_crop, then
  released for the after side).
Every measurement runs once untimed (warm-up), then --repeats times interleaved (the order of the
sides alternates by round); the tables give the medians and the ratio after/before.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench_pipeline import DAY, at_crop, copy_as, released  # a sibling script (run as python bench/...)
from data.spec import load_spec
from models import checkpoint as checkpoints
from provenance import cores, cpu_model, git_state

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = ("import runpy, sys; sys.modules.update(torch=None, torchvision=None); "
            "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)")


class Side:
    """One `python -m pipeline`: where it runs and how it is given the model."""

    def __init__(self, label: str, cwd: Path, model: dict[int, list[str]], python: list[str] | None = None):
        self.label, self.cwd, self.model = label, cwd, model  # model: {crop: its model flags}
        self.python = python or [sys.executable, "-m", "pipeline"]

    def run(self, *args: str) -> tuple[float, str]:
        """(wall seconds from start to exit, stdout); a failed command stops the bench with its error."""
        cmd = [*self.python, *args]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.cwd, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            sys.exit(f"error: {self.label}: `{' '.join(args)}` (cwd {self.cwd}) exited {proc.returncode}: {tail}")
        return seconds, proc.stdout

    def predict(self, crop: int, source: Path, table: Path) -> tuple[float, dict]:
        """(wall seconds, the JSON summary) of predict on `source` into a new table."""
        table.unlink(missing_ok=True)
        seconds, out = self.run("predict", *self.model[crop], "--device", "cpu", "--source", str(source),
                                "--table", str(table), "--no-progress")
        return seconds, self.served(out, "predict")

    def consume(self, crop: int, source: Path, table: Path, redis: str, stream: str) -> float:
        """Wall seconds of consume --exit-when-empty after `source` was published onto a new `stream`."""
        table.unlink(missing_ok=True)
        _, out = self.run("produce", "--source", str(source), "--date", DAY, "--redis", redis, "--stream", stream)
        if json.loads(out.strip().splitlines()[-1])["published"] < 1:
            sys.exit(f"error: {self.label}: produce published nothing from {source}")
        seconds, out = self.run("consume", *self.model[crop], "--device", "cpu", "--table", str(table),
                                "--redis", redis, "--stream", stream, "--exit-when-empty")
        stats = self.served(out, "consume")
        if stats["ok"] + stats["ood"] != 1:
            sys.exit(f"error: {self.label}: consume did not predict the one queued image: {out.strip()}")
        return seconds

    def served(self, out: str, command: str) -> dict:
        """The JSON summary on the last line of `out`; a row with status error stops the bench."""
        summary = json.loads(out.strip().splitlines()[-1])
        if summary["error"]:
            sys.exit(f"error: {self.label}: {command} wrote {summary['error']} error row(s): {out.strip()}")
        return summary


def redis_server(work: Path):
    """(a throwaway redis-server process, its URL), or (None, why not)."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, "no redis-server on PATH"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    return None, f"redis-server did not listen on port {port} within 5 s"


def rounds(repeats: int, measures: dict[str, Callable[[int], float]]) -> dict[str, list[float]]:
    """{name: the values of its `repeats` timed runs}: every measure once per round, after one
    untimed round; the order alternates between rounds."""
    values: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(repeats + 1):
        names = list(measures) if r % 2 == 0 else list(reversed(measures))
        for name in names:
            v = measures[name](r)
            if r:
                values[name].append(v)
    return values


def test_images(ckpt: Path, n: int, folder: Path) -> Path:
    """`n` copies (cycled) of the checkpoint's test split, dated DAY, in `folder`."""
    data = checkpoints.read(ckpt)["args"].get("data")
    if not data:
        sys.exit(f"error: {ckpt} records no dataset, whose test split the bench would serve")
    files = [p for p, _ in load_spec(data).split_samples("test")]
    return copy_as(list(itertools.islice(itertools.cycle(files), n)), folder, None)


def commit(folder: Path) -> str:
    proc = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def cell(values: list[float] | None, digits: int) -> str:
    return "—" if not values else f"{statistics.median(values):.{digits}f}"


def ratio(after: list[float] | None, before: list[float] | None) -> str:
    if not after or not before:
        return "—"
    return f"{statistics.median(after) / statistics.median(before):.2f}x"


def tables(cold: dict[str, list[float]], speed: dict[int, dict[str, list[float]]], images: int) -> None:
    """The markdown tables of the medians; a measure that was not run is a dash."""
    print("\n## cold start: wall s from process start to exit\n\n| command | before | after | after/before |\n"
          "|---|---|---|---|")
    rows = [("predict, 1 image", "before predict", "after predict"),
            ("predict, 1 image, torch blocked", None, "after, torch blocked predict"),
            ("consume --exit-when-empty, 1 message", "before consume", "after consume")]
    for label, old, new in rows:
        if new in cold:
            print(f"| {label} | {cell(cold.get(old), 2)} | {cell(cold[new], 2)} | {ratio(cold[new], cold.get(old))} |")
    print(f"\n## throughput: images/s of predict's summary, {images} images\n\n"
          f"| model input | before | after | after/before |\n|---|---|---|---|")
    for c, v in speed.items():
        print(f"| {c} px | {cell(v.get('before'), 1)} | {cell(v['after'], 1)} | {ratio(v['after'], v.get('before'))} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a train.py checkpoint (its training data must be present)")
    ap.add_argument("--baseline", help="a checkout of the commit before bundles (the before side); "
                                       "default: measure the bundle side alone")
    ap.add_argument("--baseline-backend", choices=["torch", "onnx"],
                    help="the before side's --backend (default: its own default, torch)")
    ap.add_argument("--images", type=int, default=400, help="images per throughput run")
    ap.add_argument("--crops", type=int, nargs="+", default=[64, 224], help="model input sides for throughput")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each measurement (median)")
    args = ap.parse_args()
    if args.baseline and not (Path(args.baseline) / "pipeline" / "__main__.py").is_file():
        sys.exit(f"error: --baseline {args.baseline} is no checkout of this project (no pipeline/__main__.py)")
    ckpt = Path(args.checkpoint).resolve()
    own = checkpoints.read(ckpt)["args"]["crop"]
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    redis, url = None, None
    try:
        load = os.getloadavg()
        print(f"# serving from a checkpoint (before) v from its bundle (after)\n\n{cpu_model()}, {cores()} cores; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start; checkpoint {ckpt} "
              f"({own} px); median of {args.repeats} interleaved runs after 1 warm-up")
        ckpts = {own: work / "own" / "best.pt"}
        ckpts[own].parent.mkdir(parents=True)
        shutil.copyfile(ckpt, ckpts[own])
        for c in args.crops:
            ckpts.setdefault(c, at_crop(ckpt, c, work / f"crop{c}" / "best.pt"))
        bundles = {c: released(p, work / "bundles") for c, p in ckpts.items()}
        after = Side("after", ROOT, {c: ["--bundle", str(b)] for c, b in bundles.items()})
        no_torch = Side("after, torch blocked", ROOT, after.model, [sys.executable, "-c", NO_TORCH])
        sides = [after]
        state = git_state()
        print(f"- after: {ROOT} at {(state['commit'] or 'unknown')[:7]}{' (dirty)' if state['dirty'] else ''}, "
              f"bundles {', '.join(f'{c} px {b.name}' for c, b in bundles.items())}")
        before = None
        if args.baseline:
            backend = ["--backend", args.baseline_backend] if args.baseline_backend else []
            before = Side("before", Path(args.baseline).resolve(),
                          {c: ["--checkpoint", str(p), *backend] for c, p in ckpts.items()})
            sides.insert(0, before)
            print(f"- before: {before.cwd} at {commit(before.cwd)}, backend {args.baseline_backend or 'torch'}")
        one = test_images(ckpt, 1, work / "one")
        many = test_images(ckpt, args.images, work / "many")
        if before:
            for c in ckpts:  # fits and stores the detectors and threshold beside each checkpoint copy
                before.predict(c, one, work / "prepare.db")

        measures = {f"{s.label} predict": (lambda r, s=s: s.predict(own, one, work / "cold.db")[0])
                    for s in [*sides, no_torch]}
        redis, url = redis_server(work)
        if redis is None:
            print(f"- consume cold start skipped: {url}")
        else:
            measures.update({f"{s.label} consume": (lambda r, s=s: s.consume(own, one, work / "cold.db", url,
                                                                              f"bench-{s.label}-{r}"))
                             for s in sides})
        cold = rounds(args.repeats, measures)
        speed = {}
        for c in args.crops:
            speed[c] = rounds(args.repeats, {s.label: (lambda r, s=s, c=c: s.predict(c, many, work / "many.db")[1]
                                                       ["images_per_s"]) for s in sides})
        load = os.getloadavg()

        tables(cold, speed, args.images)
        print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
