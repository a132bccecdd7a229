"""Small shared pieces of the training and evaluation commands: seeds, devices, distributed
set-up, checkpoints (one dict, written atomically, read with weights_only=True) and run logs."""
from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import torch

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and why."""


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


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write to a temporary file beside `path`, then rename: a crash mid-write leaves the previous
    checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def read_torch_file(path: str | Path, error: type[Exception], what: str):
    """torch.load with weights_only=True (no code runs from the file), or `error` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"{path}: not a {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def load_checkpoint(path: str | Path) -> dict:
    ckpt = read_torch_file(path, CheckpointError, "checkpoint of this project")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint written by train.py (format "
                              f"{CHECKPOINT_FORMAT}); a bare state_dict goes to --pretrained instead")
    return ckpt


def plain(value):
    """Arguments as data that weights_only loading accepts (paths become strings)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def append_summary(run_dir: Path, row: dict) -> None:
    """One row per epoch in summary.csv (the header is the first row's keys)."""
    path = run_dir / "summary.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
