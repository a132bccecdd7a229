"""Release bundles on the tests' tiny checkpoints: `python -m models.release` writes one folder per
checkpoint whose graph answers as the eager model does and whose OOD state is today's, the same
checkpoint gets the same id, a changed file is one error line naming it, and the reader needs no torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_cli

RUNS = ("uni", "task_defect", "multi")


def editable_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for f in dest.iterdir():
        os.chmod(f, 0o644)
    return dest


@pytest.mark.parametrize("run", RUNS)
def test_release_writes_a_verified_bundle(bundles, models, run):
    from models import checkpoint as checkpoints
    from pipeline.bundle import FILES, Bundle
    b = Bundle.load(bundles[run])
    ckpt = checkpoints.load(models[run])
    m = b.manifest
    assert b.path.name == b.id and len(b.id) == 16
    assert sorted(p.name for p in b.path.iterdir()) == sorted([*FILES, "bundle.json"])
    assert (m["paradigm"]["name"], m["paradigm"]["task"]) == (ckpt.paradigm.name, ckpt.paradigm.task)
    assert b.classes == list(ckpt.paradigm.classes) and m["paradigm"]["labels"] == ckpt.paradigm.labels
    assert m["transform"]["crop"] == [ckpt.crop, ckpt.crop] and m["transform"]["resize"] == [ckpt.resize] * 2
    assert m["top2"]["rule"] == "coherent" and m["top2"]["exclusive"]
    assert m["export"]["exporter"] in ("dynamo", "torchscript") and m["export"]["reason"]
    assert m["release"]["export_check"]["ok"]
    assert set(m["ood"]["thresholds"]) >= {b.default_scorer, "max_logit"}
    assert m["provenance"]["checkpoint_sha256"] and m["provenance"]["train_args"]["paradigm"] == ckpt.paradigm.name
    card = (b.path / "MODEL_CARD.md").read_text()
    assert "pass the OOD filter" in card
    # the checkpoint's temperature scaling (fitted on val by train.py) with its val figures, in the card too
    stored = ckpt.state["calibration"]
    assert {k: m["calibration"][k] for k in stored} == stored and m["calibration"]["fitted"].startswith("stored")
    assert "## Calibration\nThe top-2 scores are temperature-scaled" in card and "| after |" in card
    # how each task is answered, chosen on val: three rules for the one model, two for the others
    tasks = m["tasks"]
    assert set(tasks) == ({"defect"} if run == "task_defect" else {"defect", "dirt"})
    for t, r in tasks.items():
        assert r["rule"] in r["accuracy"] and "val" in r["sets"] and r["sets"]["val"] > 0
        assert set(r["accuracy"]) == ({"restricted", "argmax", "threshold"} if run == "uni" else {"argmax", "threshold"})
        assert isinstance(r["threshold"], float)
    assert "## Task answers" in card and f"| {next(iter(tasks))} |" in card


@pytest.mark.parametrize("run", RUNS)
def test_onnx_graph_answers_as_the_eager_model(bundles, models, run):
    import onnxruntime as ort
    from models import checkpoint as checkpoints
    from pipeline.bundle import Bundle
    b = Bundle.load(bundles[run])
    model = checkpoints.load(models[run]).model.eval()
    session = ort.InferenceSession(str(b.model_file), providers=["CPUExecutionProvider"])
    crop = b.manifest["transform"]["crop"][0]
    gen = torch.Generator().manual_seed(7)
    for n in (1, 3, 5):
        x = torch.randn(n, 3, crop, crop, generator=gen)
        with torch.no_grad():
            logits, features = model(x, features=True)
        got_logits, got_features = session.run(["logits", "features"], {"images": x.numpy()})
        np.testing.assert_allclose(got_logits, logits.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(got_features, features.numpy(), rtol=0, atol=1e-4)


def test_bundle_ood_state_is_the_torch_filter(bundles, models, tiny_data):
    """The bundle's OOD state is what fitting the checkpoint's filter in torch gives: same default
    scorer, same val threshold, same detector scores from its plain arrays."""
    from data.spec import load_spec
    from models import checkpoint as checkpoints
    from models import ood
    from models.detectors import DETECTORS
    from models.inference import predict_features
    from pipeline.bundle import Bundle
    b = Bundle.load(bundles["uni"])
    spec = load_spec(tiny_data)
    ckpt = checkpoints.load(models["uni"], spec)
    filt, _ = ood.fit_filter(ckpt, spec, progress=False)
    assert filt.default == b.default_scorer
    z, f = predict_features(ckpt.model, spec.split_samples("val", list(ckpt.paradigm.classes)), ckpt.transform(),
                            32, "cpu", progress=False)
    val = filt.score(b.default_scorer, z, f, ckpt.paradigm)
    assert ood.threshold_at_tpr(val, b.manifest["ood"]["tpr"])["threshold"] == pytest.approx(b.threshold(), abs=1e-6)
    features = torch.randn(6, b.manifest["outputs"]["features"], generator=torch.Generator().manual_seed(3))
    for name, cls in DETECTORS.items():
        state = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in b.detector(name).items()}
        torch.testing.assert_close(cls.from_state(state).score(features), filt.detectors[name].score(features))


def test_same_checkpoint_same_id_folder_untouched(bundles, models, tiny_data):
    from models.release import release
    first = bundles["uni"]
    before = {f.name: f.stat().st_mtime_ns for f in first.iterdir()}
    path, created = release(models["uni"], tiny_data, first.parent)
    assert (path, created) == (first, False)
    assert {f.name: f.stat().st_mtime_ns for f in first.iterdir()} == before
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("name", ["model.onnx", "detectors.npz"])
def test_flipped_byte_is_one_error_line_naming_the_file(bundles, tmp_path, name):
    from pipeline.bundle import Bundle, BundleError
    copy = editable_copy(bundles["uni"], tmp_path / "b")
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        Bundle.load(copy)
    assert "\n" not in str(e.value) and str(copy / name) in str(e.value)
    proc = run_cli("-m", "pipeline.bundle", copy, check=False)
    assert proc.returncode == 2 and proc.stderr == f"error: {e.value}\n"


def test_truncated_file_and_edited_manifest_are_refused(bundles, tmp_path):
    from pipeline.bundle import Bundle, BundleError
    copy = editable_copy(bundles["multi"], tmp_path / "b")
    model = copy / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(BundleError, match="model.onnx"):
        Bundle.load(copy)
    copy = editable_copy(bundles["multi"], tmp_path / "c")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["ood"]["thresholds"][meta["ood"]["default"]] -= 1.0  # a looser filter, same files
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle.json"):
        Bundle.load(copy)


def test_reader_imports_no_torch(bundles):
    code = ("import sys; from pipeline.bundle import Bundle; b = Bundle.load(sys.argv[1]); "
            "b.detector('knn'); assert 'torch' not in sys.modules, 'torch imported'; print(b.id)")
    proc = subprocess.run([sys.executable, "-c", code, str(bundles["task_defect"])], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == bundles["task_defect"].name
    proc = run_cli("-m", "pipeline.bundle", bundles["task_defect"])
    assert json.loads(proc.stdout)["id"] == bundles["task_defect"].name


def test_release_of_a_non_checkpoint_is_one_error_line(tmp_path, tiny_data):
    bogus = tmp_path / "best.pt"
    bogus.write_text("not a checkpoint")
    proc = run_cli("-m", "models.release", bogus, "--data", tiny_data, "--out", tmp_path / "bundles", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bundles").exists()


def test_exporter_falls_back_to_torchscript_and_says_why(models, tiny_data, tmp_path, monkeypatch):
    from models import release as rel
    from pipeline.bundle import Bundle
    real = rel.export_onnx

    def no_dynamo(model, crop, exporter="torchscript"):
        if exporter == "dynamo":
            raise RuntimeError("unsupported operator")
        return real(model, crop, exporter)

    monkeypatch.setattr(rel, "export_onnx", no_dynamo)
    path, created = rel.release(models["task_defect"], tiny_data, tmp_path)
    export = Bundle.load(path).manifest["export"]
    assert created and export["exporter"] == "torchscript" and "unsupported operator" in export["reason"]
