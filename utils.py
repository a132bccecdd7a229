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
    """Drop summary.csv rows of epochs >= first_epoch (a resumed run writes them again)."""
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
