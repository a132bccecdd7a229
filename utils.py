"""Small shared pieces of the training and evaluation commands: seeds, devices, distributed
set-up, reading torch files safely (weights_only=True) and run logs. The checkpoint's own format
lives in models/checkpoint.py."""
from __future__ import annotations

import argparse
import csv
import math
import numbers
import os
import random
import sys
from pathlib import Path

import torch

from provenance import cores, default_workers  # noqa: F401 (torch-free: the serving worker uses them too)

MAX_TRIAL_JOBS = 4  # training runs side by side on CPU at most (measured on 2 cores only: docs/training.md)


def trial_jobs(runs: int, cuda: bool = False, n_cores: int | None = None, jobs: int | None = None) -> tuple[int, int]:
    """(training runs at a time, torch threads for each) for a script that trains `runs` runs
    (run/train_trials.sh, run/reproduce.sh, run/ablations.sh).

    On CPU: as many runs at a time as there are runs to train, up to one per core and
    MAX_TRIAL_JOBS, the cores shared out evenly among them. Small runs side by side keep the cores
    busier than one run with all of them (its threads wait for each other at every operator and for
    the next batch; separate runs fill those gaps), yet a run that is alone gets every core, not a
    core's share of a machine it does not share. Threads are never more than the cores (one
    thread a run when --jobs asks for more runs than cores): OpenMP teams that outnumber the cores
    spin against each other and run many times slower. `jobs` (--jobs N) sets the runs at a time
    instead, never more than `runs`, the cores shared among those. A GPU trains one run at a time
    (unless `jobs` says otherwise) with torch's default threads (0)."""
    runs = max(1, runs)
    if cuda and jobs is None:
        return 1, 0
    n = cores() if n_cores is None else n_cores
    at_once = max(1, min(runs, n, MAX_TRIAL_JOBS) if jobs is None else min(runs, jobs))
    return at_once, 0 if cuda else max(1, n // at_once)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def renamed_flag(parser, old: str, new: str) -> None:
    """Accept `old`, a flag's former name, as `new` (same value), hidden from --help; using it
    prints one note on stderr, so commands written for the old name keep working."""
    dest = next(a.dest for a in parser._actions if new in a.option_strings)

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"note: {old} is now {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=dest, action=Renamed, help=argparse.SUPPRESS)


def init_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) under torchrun; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return torch.distributed.get_rank(), local, world


def read_torch_file(path: str | Path, error: type[Exception], what: str):
    """torch.load with weights_only=True (no code runs from the file), or `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).splitlines() or ["empty or truncated file"])[0][:200]
        raise error(f"{path}: not a {what} ({type(e).__name__}: {first})") from None


def replace_module(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    """Put `new` in the place of `model`'s submodule `name` (a dotted name, as named_modules gives)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def to_numpy(t: torch.Tensor):
    """A tensor as a CPU numpy array for pipeline.outputs: detached, on the CPU, bfloat16 (which
    numpy lacks) as float32; other dtypes kept."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def plain(value):
    """Plain data for JSON and for weights_only checkpoints: dicts, lists, str, bool, int, float;
    numpy numbers become Python numbers, NaN becomes None (strict JSON has no NaN) and anything
    else (a Path) its string."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return None if math.isnan(value) else float(value)
    return str(value)


def append_summary(run_dir: Path, row: dict) -> None:
    """One row per epoch in summary.csv (the header is the first row's keys)."""
    path = run_dir / "summary.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def read_summary(run_dir: Path) -> list[dict]:
    """The rows of summary.csv (strings, as written); [] when the run has none."""
    path = Path(run_dir) / "summary.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_summary(run_dir: Path, first_epoch: int) -> None:
    """Drop summary.csv rows of epochs >= first_epoch (a resumed run writes them again; a fresh run,
    first_epoch 1, starts the file afresh)."""
    path = Path(run_dir) / "summary.csv"
    rows = read_summary(run_dir)
    if not rows:
        return
    keep = [r for r in rows if int(r["epoch"]) < first_epoch]
    if len(keep) == len(rows):
        return
    tmp = path.with_name(".summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    os.replace(tmp, path)


if __name__ == "__main__":  # `python -m utils trial-jobs --runs N [--jobs auto|N] [--device ...]`: "JOBS THREADS"
    p = argparse.ArgumentParser(prog="python -m utils")
    p.add_argument("command", choices=["trial-jobs"])
    p.add_argument("--runs", type=int, required=True, help="training runs the script will train")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", default="auto", help="auto | N")
    a = p.parse_args()
    if a.jobs != "auto" and not (a.jobs.isdigit() and int(a.jobs) > 0):
        p.error(f"--jobs {a.jobs}: a positive whole number or auto")
    if a.runs < 1:
        p.error(f"--runs {a.runs}: at least 1")
    print(*trial_jobs(a.runs, a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available()),
                      jobs=None if a.jobs == "auto" else int(a.jobs)))
