"""Provenance: what produced a result (commit, dirty flag, packages, CPU, threads, device) in
args.yaml, in every checkpoint and in REPORT.md's header; a report over runs of several commits
or of a dirty tree says so."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

import provenance
from models import checkpoint
from tests.conftest import ROOT

FIELDS = {"commit", "dirty", "packages", "python", "platform", "cpu", "cores", "threads", "device"}


def head() -> str | None:
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_provenance_needs_no_torch():
    code = ("import json, sys, provenance; p = provenance.provenance('cpu', threads=3); "
            "print(json.dumps({'torch': 'torch' in sys.modules, **p}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    p = yaml.safe_load(proc.stdout)
    assert p.pop("torch") is False and FIELDS <= set(p)
    assert p["threads"] == 3 and p["device"] == "cpu" and p["cores"] >= 1 and p["cpu"]
    assert {"torch", "numpy", "scipy", "scikit-learn"} <= set(p["packages"])
    assert p["commit"] == head()
    assert isinstance(p["dirty"], bool) if head() else p["dirty"] is None and p["commit_error"]


def test_no_git_checkout_gives_a_reason(monkeypatch, tmp_path):
    for root, path in ((tmp_path, None), (ROOT, "")):  # not a checkout; git not on PATH
        monkeypatch.setattr(provenance, "ROOT", root)
        if path is not None:
            monkeypatch.setenv("PATH", path)
        provenance.git_state.cache_clear()
        p = provenance.provenance()
        assert p["commit"] is None and p["dirty"] is None and p["commit_error"]
        assert "commit unknown (" in provenance.describe(p)
    provenance.git_state.cache_clear()


def test_args_yaml_and_checkpoint_carry_provenance(artifacts):
    run = artifacts / "uni" / "exp1"
    args = yaml.safe_load((run / "args.yaml").read_text())
    ckpt = checkpoint.read(run / "best.pt")
    for p in args["provenance"], ckpt["provenance"]:
        assert FIELDS <= set(p) and p["device"] == "cpu" and p["threads"] == args["threads"]
        assert p["commit"] == head() and p["packages"]["torch"]
    assert checkpoint.load(run / "best.pt").provenance()["provenance"] == ckpt["provenance"]


def test_old_checkpoint_without_provenance_still_loads(artifacts, tmp_path):
    state = checkpoint.read(artifacts / "uni" / "exp1" / "best.pt")
    del state["provenance"]
    checkpoint.save(state, tmp_path / "old.pt")
    assert checkpoint.load(tmp_path / "old.pt").provenance()["provenance"] is None


def fake(commit, dirty=False, threads=1) -> dict:
    return {"commit": commit, "dirty": dirty, "packages": {"torch": "2.0"}, "python": "3.11", "platform": "Linux",
            "cpu": "a CPU", "cores": 2, "threads": threads, "device": "cpu"}


def test_report_lines_group_runs_and_warn_on_mixed_commits():
    a, b = "a" * 40, "b" * 40
    same = provenance.report_lines(fake(a), {"uni/exp1": fake(a), "uni/exp2": fake(a)})
    assert same[0].startswith(f"- this report: commit {a} (clean)") and same[1].startswith(f"- all runs: commit {a}")
    assert len(same) == 2 and not any("Warning" in line for line in same)

    lines = provenance.report_lines(fake(a, dirty=True), {"uni/exp1": fake(a), "uni/exp2": fake(a),
                                                          "multi/exp1": fake(b, dirty=True), "task_dirt/exp1": None})
    text = "\n".join(lines)
    assert f"- uni/exp1, uni/exp2: commit {a} (clean)" in text
    assert f"- multi/exp1: commit {b} (dirty: uncommitted changes)" in text
    assert "- task_dirt/exp1: no provenance recorded" in text
    warnings = [line for line in lines if line.startswith("- **Warning:**")]
    assert len(warnings) == 4
    assert "2 different commits" in warnings[0] and f"{a}: uni/exp1, uni/exp2; {b}: multi/exp1" in warnings[0]
    assert "uncommitted changes" in warnings[1] and warnings[1].endswith(": multi/exp1")
    assert warnings[2].endswith(": task_dirt/exp1") and "this report" in warnings[3]


@pytest.mark.parametrize("device,threads", [("cpu", 2), ("cuda:0", None)])
def test_describe_names_device_and_threads(device, threads):
    p = {**fake("c" * 40, threads=threads), "device": device}
    text = provenance.describe(p)
    assert f"device {device}" in text and ("2 torch threads" in text) == (threads == 2)


def test_cuda_device_is_named(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Fake GPU {device.index}")
    p = provenance.provenance(torch.device("cuda", 0), threads=4)
    assert p["device"] == "cuda:0" and p["device_name"] == "Fake GPU 0" and "cuda" in p
    assert "device cuda:0 (Fake GPU 0)" in provenance.describe(p)
