"""Small shared pieces of the training and evaluation commands: seeds, devices, distributed
set-up, reading torch files safely (weights_only=True) and run logs. The checkpoint's own format
lives in models/checkpoint.py."""
from __future__ import annotations

import csv
import math
import numbers
import os
import random
from pathlib import Path

import torch


CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
MAX_TRIAL_JOBS = 4  # training runs side by side on CPU at most (measured on 2 cores only: README "Training")
IN_PROCESS_CORES = 8  # up to this many cores, inference decodes images in-process (default_workers)


def cores() -> int:
    """CPU cores this process may use: its CPU set, and no more than a container's CPU quota (a pod
    limited to 2 CPUs on a 64-core node sees 64 in its CPU set; 64 threads there would thrash)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or one this does not understand: the CPU set
        pass
    return max(1, n)


def default_workers() -> int:
    """DataLoader worker processes for inference over image files (evaluation, serving's batch
    mode): none up to IN_PROCESS_CORES cores, then a quarter of the cores. Worker processes start
    again for every image set and compete with the model's threads for few cores: on 2 cores
    evaluation ran 1.25-1.33x faster with none than with 2 (README "Evaluation"), and the batch
    pipeline likewise (pipeline/README.md "Performance")."""
    n = cores()
    return 0 if n <= IN_PROCESS_CORES else n // 4


def trial_jobs(cuda: bool, n_cores: int | None = None, jobs: int | None = None) -> tuple[int, int]:
    """(training runs at a time, torch threads for each) when a script trains several runs
    (run/train_trials.sh, run/reproduce.sh). A GPU trains one run at a time with torch's default
    threads (0). On CPU, one run per core up to MAX_TRIAL_JOBS, the cores shared out evenly: on 2
    cores two 1-thread runs side by side train 1.49x the images per second of one 2-thread run, and
    threads are never more than cores (two 2-thread runs on 2 cores were 9x slower than one: their
    OpenMP teams spin against each other). `jobs` given: that many runs, the cores shared out."""
    if cuda and jobs is None:
        return 1, 0
    n = cores() if n_cores is None else n_cores
    jobs = max(1, min(n, MAX_TRIAL_JOBS) if jobs is None else jobs)
    return jobs, 0 if cuda else max(1, n // jobs)


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


if __name__ == "__main__":  # `python -m utils trial-jobs [--device auto|cpu|cuda]`: "JOBS THREADS"
    import argparse
    p = argparse.ArgumentParser(prog="python -m utils")
    p.add_argument("command", choices=["trial-jobs"])
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", default="auto", help="auto | N")
    a = p.parse_args()
    if a.jobs != "auto" and not (a.jobs.isdigit() and int(a.jobs) > 0):
        p.error(f"--jobs {a.jobs}: a positive whole number or auto")
    print(*trial_jobs(a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available()),
                      jobs=None if a.jobs == "auto" else int(a.jobs)))
