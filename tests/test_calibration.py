"""Temperature scaling: the fit on hand-computed cases, what a temperature may change (scores) and
may not (labels, decisions, OOD scores), the record train.py stores, evaluation's before/after, and
serving the calibrated scores (an older bundle serves as trained and says 'none')."""
from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
from dataclasses import replace

import numpy as np
import pytest
import torch

from models import calibration as calib
from models.paradigms import build_paradigm


def test_fitted_temperature_is_the_closed_form_optimum():
    """Every image has the same logits, so the NLL optimum puts the labelled class's probability at
    its frequency: binary logit 1 with 80 % positives -> sigmoid(1/T) = 0.8, T = 1/ln 4; softmax
    logits (1, 0, 0) with 80 % class 0 -> e^(1/T) / (e^(1/T) + 2) = 0.8, T = 1/ln 8."""
    y = np.r_[np.ones(80, int), np.zeros(20, int)]
    assert calib.fit_temperature("binary", np.ones((100, 1)), y) == pytest.approx(1 / math.log(4), rel=1e-4)
    z3 = np.tile([1.0, 0.0, 0.0], (100, 1))
    y3 = np.r_[np.zeros(80, int), np.ones(10, int), np.full(10, 2)]
    assert calib.fit_temperature("softmax", z3, y3) == pytest.approx(1 / math.log(8), rel=1e-4)
    assert calib.fit_temperature("softmax", z3[:0], y3[:0]) == 1.0  # no labelled image: unchanged
    right = np.c_[np.full(20, 2.0), np.zeros(20)]  # every val decision right: no evidence, unchanged
    assert calib.fit_temperature("softmax", right, np.zeros(20, int)) == 1.0
    assert calib.fit_temperature("binary", np.full((20, 1), -0.3), np.zeros(20, int)) == 1.0


def test_fit_is_the_nll_minimum_per_head_on_a_grid(toy):
    """On random logits, each head's temperature is the minimum of torch's cross-entropy over a
    fine grid (an NLL computed independently of the fit), and fitting the multi-task model fits
    every head on its own labelled images; val NLL does not rise."""
    gen = torch.Generator().manual_seed(3)
    multi = build_paradigm("multi", toy)
    labels = [toy.class_names[i % len(toy.class_names)] for i in range(300)]
    logits = 4 * torch.randn(300, sum(h.size for h in multi.heads), generator=gen)
    record = calib.fit(multi, logits, labels)
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 4001))
    for name, kind, z, y in calib.head_data(multi, logits, labels):
        z, y = torch.from_numpy(z), torch.from_numpy(y)
        nll = [(torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0] / t, y.double()) if kind == "binary"
                else torch.nn.functional.cross_entropy(z / t, y)).item() for t in grid]
        assert record["temperatures"][name] == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3), name
        assert record["n"][name] == len(y)
    assert set(record["temperatures"]) == {h.name for h in multi.heads} and record["split"] == "val"
    assert record["val"]["after"]["nll"] <= record["val"]["before"]["nll"]


@pytest.mark.parametrize("name,task", [("uni", None), ("multi", None), ("task", "defect")])
def test_a_temperature_changes_scores_never_labels_or_decisions(toy, name, task):
    """Under any positive temperatures: the same top-2 labels (both rules), the same decisions and
    accuracy, scores equal to the scaled label scores; the OOD scores are never given temperatures."""
    paradigm = build_paradigm(name, toy, task)
    gen = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(64, sum(h.size for h in paradigm.heads), generator=gen)
    temps = tuple(float(t) for t in 0.3 + 3 * torch.rand(len(paradigm.heads), generator=gen))
    for rule in ("plain", "coherent"):
        raw_labels, raw_scores = paradigm.top_labels(logits, 2, rule)
        labels, scores = paradigm.top_labels(logits, 2, rule, temps)
        assert labels == raw_labels
        _, scaled = paradigm.output_heads.label_scores(logits.numpy(), temps)
        names = paradigm.labels
        want = [[scaled[i, names.index(l)] for l in row] for i, row in enumerate(labels)]
        np.testing.assert_allclose(scores.numpy(), want, rtol=1e-6)
        assert not np.allclose(scores.numpy(), raw_scores.numpy())
    labels = [toy.class_names[i % len(toy.class_names)] for i in range(64)]
    before, (_, right) = calib.figures(paradigm, logits, labels)
    after, (_, right_after) = calib.figures(paradigm, logits, labels, temps)
    assert right.tolist() == right_after.tolist() and before["accuracy"] == after["accuracy"]
    if len(paradigm.heads) == 1:  # one head: the same label order under any temperature
        order = np.argsort(-paradigm.output_heads.label_scores(logits.numpy())[1], axis=1, kind="stable")
        assert (np.argsort(-scaled, axis=1, kind="stable") == order).all()


def test_bad_temperatures_are_refused(toy):
    heads = build_paradigm("multi", toy).output_heads
    z = np.zeros((2, sum(heads.sizes)), np.float32)
    for bad in ((1.0,), (1.0, 1.0, 0.0, 1.0), (1.0, 1.0, float("nan"), 1.0)):
        with pytest.raises(ValueError, match="one positive finite value per head"):
            heads.scale(z, bad)
    with pytest.raises(ValueError, match="no temperature for head"):
        heads.ordered({"defect": 1.0})


@pytest.mark.parametrize("run", ["uni", "multi", "task_defect"])
def test_train_stores_the_val_calibration_in_best_pt(artifacts, tiny_data, run):
    from data.spec import load_spec
    from models import checkpoint as checkpoints
    ckpt = checkpoints.load(artifacts / run / "exp1" / "best.pt", load_spec(tiny_data))
    record = ckpt.state["calibration"]
    assert list(record["temperatures"]) == [h.name for h in ckpt.paradigm.heads]
    assert all(calib.BOUNDS[0] <= t <= calib.BOUNDS[1] for t in record["temperatures"].values())
    n_val = len(ckpt.spec.split_samples("val", list(ckpt.paradigm.classes)))
    assert record["val"]["before"]["n_decisions"] == sum(record["n"].values()) >= n_val
    assert record["val"]["after"]["nll"] <= record["val"]["before"]["nll"] + 1e-9


def test_evaluation_reports_before_and_after_and_nothing_else_moves(artifacts, tiny_data, tmp_path):
    """The stored temperature is used; a checkpoint without one gets the same one fitted from its
    val logits (no set inferred again); with temperature 1 everything is as with the fitted one
    except the calibrated figures, which then equal the uncalibrated ones."""
    from data.spec import load_spec
    from evaluation.checkpoint import evaluate_checkpoint
    from models import checkpoint as checkpoints
    spec = load_spec(tiny_data)
    path = artifacts / "multi" / "exp1" / "best.pt"
    ckpt = checkpoints.load(path, spec)
    stored = ckpt.state["calibration"]

    def evaluate(state):
        return evaluate_checkpoint(path, spec, cache_dir=tmp_path, progress=False,
                                   loaded=replace(ckpt, state=state))
    m, raw = evaluate(ckpt.state)
    c = m["calibration"]
    assert c["temperatures"] == stored["temperatures"] and c["fitted"].startswith("stored in the checkpoint")
    assert set(c["before"]) == set(c["after"]) == {"ece", "nll", "brier", "mean_confidence"}
    assert raw["calibration"]["before"][1].tolist() == raw["calibration"]["after"][1].tolist()
    old, _ = evaluate({k: v for k, v in ckpt.state.items() if k != "calibration"})
    assert old["calibration"]["fitted"].startswith("fitted on val") and old["inferred_sets"] == []
    for head, t in stored["temperatures"].items():
        assert old["calibration"]["temperatures"][head] == pytest.approx(t, rel=1e-4)
    unit = {**stored, "temperatures": dict.fromkeys(stored["temperatures"], 1.0)}
    one, _ = evaluate({**ckpt.state, "calibration": unit})
    assert one["calibration"]["after"] == pytest.approx(one["calibration"]["before"])
    assert one["calibration"]["before"] == m["calibration"]["before"]
    for key in ("tasks", "rejection", "multilabel", "test_top2"):
        assert one[key] == m[key], key


def older_bundle(src, dest):
    """A copy of bundle `src` as released before calibration existed: no `calibration` in bundle.json."""
    from pipeline.bundle import MANIFEST, bundle_id
    shutil.copytree(src, dest)
    for f in dest.iterdir():
        os.chmod(f, 0o644)
    meta = json.loads((dest / MANIFEST).read_text())
    meta.pop("calibration")
    meta["id"] = bundle_id(meta["files"], meta)
    (dest / MANIFEST).write_text(json.dumps(meta))
    return dest


def test_serving_writes_calibrated_scores_and_names_the_calibration(bundles, models, tiny_data, tmp_path):
    """The rows carry the bundle's calibration and scores scaled by it (labels as without it); a
    bundle released before calibration serves its scores as trained and records 'none'; a table
    written before the column existed gains it when opened."""
    from models import checkpoint as checkpoints
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import COLUMNS, PredictionTable
    pred, old = Predictor.load(bundles["multi"]), Predictor.load(older_bundle(bundles["multi"], tmp_path / "old"))
    record = checkpoints.read(models["multi"])["calibration"]
    assert pred.bundle.manifest["calibration"]["temperatures"] == record["temperatures"]
    assert pred.calibration == "temperature " + ",".join(f"{t:.3g}" for t in record["temperatures"].values())
    assert old.calibration == "none" and old.temperatures is None
    db = tmp_path / "p.db"
    conn = sqlite3.connect(db)  # the table as an older version wrote it: no calibration column
    cols = ", ".join(f"{c} {t}" for c, t in COLUMNS if c != "calibration")
    conn.execute(f"CREATE TABLE predictions ({cols}, PRIMARY KEY (image_id, model_version))")
    conn.commit()
    conn.close()
    table = PredictionTable(str(db))
    items = list_source(tiny_data / "test")[:6]
    for p in (pred, old):
        run_batch(p, table, items, batch_size=4, workers=0, progress=False)
    rows = table.query()
    by = {v: {r["image_id"]: r for r in rows if r["model_version"] == v} for v in (pred.version, old.version)}
    assert {r["calibration"] for r in by[pred.version].values()} == {pred.calibration}
    assert {r["calibration"] for r in by[old.version].values()} == {"none"}
    assert by[pred.version].keys() == by[old.version].keys() and len(by[old.version]) == 6
    for i, r in by[pred.version].items():
        o = by[old.version][i]
        assert (r["top1_label"], r["top2_label"], r["ood_score"]) == (o["top1_label"], o["top2_label"], o["ood_score"])
    assert any(abs(r["top1_prob"] - by[old.version][i]["top1_prob"]) > 1e-4 for i, r in by[pred.version].items())
