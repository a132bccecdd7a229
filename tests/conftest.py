"""Shared fixtures: one tiny embedded dataset per test session, and the CLI runner."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Small enough for a 1-epoch PMG run in seconds on 2 CPU cores.
TINY_TRAIN = ["--backbone", "resnet18", "--pretrained", "none", "--resize", "36", "--crop", "32",
              "--branch-mid", "32", "--branch-out", "64", "--hidden", "32", "--batch-size", "8",
              "--workers", "0", "--no-progress", "--profile", "quick", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from data.generate import generate
    out = tmp_path_factory.mktemp("data") / "sofar_tiny"
    generate(out, seed=0, size=40, train=6, val=3, test=3, ext=2, ood=2, multilabel=2, workers=1, montage=False)
    return out


@pytest.fixture(scope="session")
def artifacts(tiny_data, tmp_path_factory) -> Path:
    """One tiny checkpoint per paradigm (one epoch) in the layout of artifacts/, plus a second uni
    trial (a copy) so that tables have a mean ± std; shared by the evaluation and notebook tests."""
    import shutil
    out = tmp_path_factory.mktemp("artifacts")
    for flags in (["--paradigm", "uni"], ["--paradigm", "task", "--task", "defect"],
                  ["--paradigm", "task", "--task", "dirt"], ["--paradigm", "multi"]):
        run_cli("train.py", "--data", tiny_data, *flags, "--epochs", "1", "--output-dir", out, *TINY_TRAIN)
    (out / "uni" / "exp2").mkdir()
    shutil.copy(out / "uni" / "exp1" / "best.pt", out / "uni" / "exp2" / "best.pt")
    return out


def run_cli(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    """Run `python ARGS...` the way a user does; on failure show what it printed."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
