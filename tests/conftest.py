"""Shared fixtures: one tiny embedded dataset and one tiny checkpoint per paradigm per test session,
the toy spec, and the CLI runner. What they are built from is in tests/builders.py."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small enough for a 1-epoch PMG run in seconds on 2 CPU cores.
TINY_TRAIN = ["--backbone", "resnet18", "--pretrained", "none", "--resize", "36", "--crop", "32",
              "--branch-mid", "32", "--branch-out", "64", "--hidden", "32", "--batch-size", "8",
              "--workers", "0", "--no-progress", "--profile", "quick", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from tests.builders import embedded_dataset
    return embedded_dataset(tmp_path_factory.mktemp("data") / "sofar_tiny")


@pytest.fixture(scope="session")
def toy():
    from tests.builders import toy_spec
    return toy_spec()


@pytest.fixture(scope="session")
def artifacts(tiny_data, tmp_path_factory) -> Path:
    """One tiny checkpoint per paradigm (one epoch) in the layout of artifacts/, plus a second uni
    trial (a copy) so that tables have a mean ± std; shared by the evaluation, notebook, serving
    and pipeline tests."""
    out = tmp_path_factory.mktemp("artifacts")
    for flags in (["--paradigm", "uni"], ["--paradigm", "task", "--task", "defect"],
                  ["--paradigm", "task", "--task", "dirt"], ["--paradigm", "multi"]):
        run_cli("train.py", "--data", tiny_data, *flags, "--epochs", "1", "--artifacts", out, *TINY_TRAIN)
    (out / "uni" / "exp2").mkdir()
    shutil.copy(out / "uni" / "exp1" / "best.pt", out / "uni" / "exp2" / "best.pt")
    return out


@pytest.fixture(scope="session")
def models(artifacts, tmp_path_factory) -> dict[str, Path]:
    """The checkpoints of `artifacts` by run name, copied where the pipeline may write beside them
    (`--checkpoint` releases into bundles/ beside the checkpoint) without changing what the
    evaluation tests read."""
    out = tmp_path_factory.mktemp("models")
    ckpts = {}
    for run in ("uni", "task_defect", "task_dirt", "multi"):
        ckpts[run] = out / run / "best.pt"
        ckpts[run].parent.mkdir()
        shutil.copy(artifacts / run / "exp1" / "best.pt", ckpts[run])
    return ckpts


@pytest.fixture(scope="session")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    """Each checkpoint of `models` released by `python -m models.release` (OOD filter fitted on the
    tiny dataset it was trained on): the bundles the pipeline serves, by run name."""
    out = tmp_path_factory.mktemp("bundles")
    found = {}
    for run, ckpt in models.items():
        proc = run_cli("-m", "models.release", ckpt, "--out", out)
        assert proc.stdout.startswith("wrote "), proc.stdout
        found[run] = Path(proc.stdout.split()[1])
    return found


def run_cli(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    """Run `python ARGS...` the way a user does; on failure show what it printed."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
