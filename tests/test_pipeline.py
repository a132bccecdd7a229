"""Batch mode of the deployed pipeline (no servers): table rows, bad files, thresholds, manifests,
the inspectors' query, task-centric tables, and the deploy/ manifests agreeing with the code."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.builders import write_bad_files, write_images
from tests.conftest import ROOT
from tests.test_pipeline_support import by_path, pipeline_cli


@pytest.fixture()
def uni(models, tmp_path):
    """A private copy of the uni checkpoint (its threshold file is written beside it)."""
    dst = tmp_path / "model" / "best.pt"
    dst.parent.mkdir()
    shutil.copy(models["uni"], dst)
    return dst


def test_predict_folder_writes_one_row_per_file_and_bad_files_become_errors(uni, tmp_path, tiny_data):
    src = tmp_path / "src"
    write_images(src / "good", 40)
    expected = write_bad_files(src / "bad")
    db = tmp_path / "p.db"
    proc = pipeline_cli("predict", "--checkpoint", uni, "--source", src, "--table", db, "--workers", "2",
                        "--batch-size", "16")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 48 and summary["error"] == 5 and summary["ok"] + summary["ood"] == 43
    assert summary["images_per_s"] > 0 and "predict" in proc.stderr  # the tqdm bar
    assert (uni.parent / "best.pt.threshold.json").is_file()  # computed at first use and cached

    from data.spec import load_spec
    from pipeline.table import PredictionTable
    rows = by_path(PredictionTable(str(db)).query())
    assert len(rows) == 48
    for name, kind in expected.items():
        r = rows[f"bad/{name}"]
        if kind == "error":
            assert r["status"] == "error" and name in r["error"] and r["top1_label"] is None
        else:
            assert r["status"] in ("ok", "ood") and r["error"] is None
    assert "decompression bomb" in rows["bad/bomb.png"]["error"]
    assert "empty file" in rows["bad/zero.jpg"]["error"]
    good = rows["good/part0/img_00000.jpg"]
    classes = set(load_spec(tiny_data).class_names)
    assert {good["top1_label"], good["top2_label"]} <= classes and good["top2_label"] != good["top1_label"]
    assert 1 >= good["top1_prob"] >= good["top2_prob"] >= 0
    assert good["is_ood"] == (good["ood_score"] < good["ood_threshold"])
    from models import ood  # the default scorer, chosen on val + ood_val, fitted at first use beside the checkpoint
    stored = json.loads((uni.parent / "best.pt.threshold.json").read_text())
    assert {r["ood_scorer"] for r in rows.values()} == {ood.load(uni).default} == {stored["score"]}
    assert {r["ood_threshold"] for r in rows.values()} == {stored["threshold"]}
    assert good["model_name"] == "pmg-resnet18-uni" and len(good["model_version"]) == 16
    assert good["captured_date"] and good["processed_at"]


def test_batch_mode_runs_where_no_redis_client_is_installed(uni, tmp_path):
    """predict needs no Redis client (a GPU box, a laptop): with `redis` and `psycopg` made
    unimportable it writes its rows to SQLite; a queue command says in one line what to install."""
    hide = tmp_path / "hide"
    hide.mkdir()
    for name in ("redis", "psycopg"):
        (hide / f"{name}.py").write_text(f"raise ModuleNotFoundError('no {name} here', name='{name}')\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    write_images(tmp_path / "src", 6)
    db = tmp_path / "p.db"
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True)
    proc = run("predict", "--checkpoint", uni, "--source", tmp_path / "src", "--table", db, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["images"] == 6
    from pipeline.table import PredictionTable
    assert len(PredictionTable(str(db)).query()) == 6
    proc = run("consume", "--checkpoint", uni, "--table", db, "--exit-when-empty")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: queue mode (produce, consume, redrive, trim) needs the Redis client: "
                                   "pip install -r requirements-serve.txt (batch mode, predict and query, runs "
                                   "without it)")


def test_rerun_is_an_idempotent_upsert(uni, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 20)
    pred = Predictor.load(uni)
    pred.resolve_threshold()
    table = PredictionTable(str(tmp_path / "p.db"))
    items = list_source(tmp_path / "src")
    first = run_batch(pred, table, items, batch_size=8, workers=0, progress=False)
    rows1 = {r["image_id"]: r for r in table.query()}
    second = run_batch(pred, table, items, batch_size=8, workers=0, progress=False)
    rows2 = {r["image_id"]: r for r in table.query()}
    assert first["images"] == second["images"] == len(rows1) == len(rows2) == 20
    drop = lambda r: {k: v for k, v in r.items() if k not in ("processed_at", "ood_score", "top1_prob", "top2_prob")}
    assert {k: drop(v) for k, v in rows1.items()} == {k: drop(v) for k, v in rows2.items()}


def test_top2_rule_is_applied_and_recorded(uni, tmp_path):
    """--top2 coherent (the default) never writes a second label that the first excludes (a task's
    other class); plain is the score order; top-1 is the same, and each row names its rule. (The
    plain run takes one stream, --streams 1, the coherent run the default streams: top-1 agrees.)"""
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 12)
    rows = {}
    for rule in ("plain", "coherent"):
        db = tmp_path / f"{rule}.db"
        pipeline_cli("predict", "--checkpoint", uni, "--source", tmp_path / "src", "--table", db, "--top2", rule,
                     *(["--streams", "1"] if rule == "plain" else []))
        rows[rule] = {r["image_id"]: r for r in PredictionTable(str(db)).query()}
    from models import checkpoint as checkpoints
    ck = checkpoints.load(uni)
    assert len(rows["plain"]) == 12 and rows["plain"].keys() == rows["coherent"].keys()
    for i, p in rows["plain"].items():
        c = rows["coherent"][i]
        assert (p["top2_rule"], c["top2_rule"]) == ("plain", "coherent") and p["top1_label"] == c["top1_label"]
        assert frozenset((c["top1_label"], c["top2_label"])) not in ck.paradigm.exclusive
    proc = pipeline_cli("predict", "--checkpoint", uni, "--source", tmp_path / "src", "--table", tmp_path / "x.db",
                        "--top2", "best", check=False)
    assert proc.returncode == 2 and "--top2: invalid choice: 'best'" in proc.stderr


def test_threshold_command_and_override(uni, tmp_path, tiny_data):
    from data.spec import load_spec
    proc = pipeline_cli("threshold", "--checkpoint", uni, "--data", tiny_data, "--tpr", "0.5")
    rec = json.loads(proc.stdout)
    assert rec["tpr"] == 0.5 and 0.5 <= rec["val_accepted"] < 1
    assert rec["n_val"] == len(load_spec(tiny_data).split_samples("val"))
    stored = json.loads((uni.parent / "best.pt.threshold.json").read_text())
    assert stored["threshold"] == rec["threshold"]

    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    write_images(tmp_path / "src", 6)
    pred = Predictor.load(uni)
    assert pred.resolve_threshold() == rec["threshold"]
    pred.resolve_threshold(override=1e9)  # --threshold: everything is OOD
    seen = []
    run_batch(pred, None, list_source(tmp_path / "src"), 4, 0, False, on_rows=seen.extend)
    assert [r["status"] for r in seen] == ["ood"] * 6 and all(r["is_ood"] for r in seen)


def test_manifest_dates_filter_and_the_inspectors_query(uni, tmp_path):
    imgs = write_images(tmp_path / "img", 9)
    manifest = tmp_path / "manifest.csv"
    lines = ["path,captured_date,image_id"]
    lines += [f"img/{p.parent.name}/{p.name},2026-11-2{1 + i % 2},car-{i}" for i, p in enumerate(imgs)]
    lines += ["img/missing.jpg,2026-11-22,car-missing"]
    manifest.write_text("\n".join(lines) + "\n")
    db = tmp_path / "p.db"
    pipeline_cli("predict", "--checkpoint", uni, "--source", manifest, "--date", "2026-11-22", "--table",
                 f"sqlite:///{db}", "--workers", "0", "--no-progress")
    from pipeline.table import PredictionTable
    t = PredictionTable(str(db))
    rows = {r["image_id"]: r for r in t.query()}
    assert set(rows) == {"car-1", "car-3", "car-5", "car-7", "car-missing"}
    assert rows["car-missing"]["status"] == "error" and "file not found" in rows["car-missing"]["error"]
    assert all(r["captured_date"] == "2026-11-22" for r in rows.values())
    everything = t.inspect("2026-11-22", t.labels())
    assert {r["image_id"] for r in everything} == {k for k, r in rows.items() if r["status"] == "ok"}
    some = t.labels()[:2]
    proc = pipeline_cli("query", "--table", db, "--date", "2026-11-22", "--labels", *some)
    got = {json.loads(line)["image_id"] for line in proc.stdout.splitlines()}
    assert got == {k for k, r in rows.items() if r["status"] == "ok" and set(some) & {r["top1_label"], r["top2_label"]}}
    # No label is assumed (SOFAR's or any other): without --labels the command names the table's.
    proc = pipeline_cli("query", "--table", db, "--date", "2026-11-22", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and not proc.stdout
    assert "--labels" in proc.stderr and ", ".join(t.labels()) in proc.stderr
    plan = t.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM predictions WHERE captured_date = '2026-11-22' "
                          "AND status = 'ok'").fetchall()
    assert "predictions_day_idx" in str(plan)


def test_sql_placeholders_for_postgres_only_outside_quotes():
    from pipeline.table import postgres_sql
    assert postgres_sql("WHERE a = ? AND b = '?' AND c LIKE 'x%' AND \"d?\" = ?") == \
        "WHERE a = %s AND b = '?' AND c LIKE 'x%%' AND \"d?\" = %s"
    assert postgres_sql("WHERE a = 'it''s ?' OR b = ?") == "WHERE a = 'it''s ?' OR b = %s"


def test_task_centric_counterpart_writes_one_table_per_model(models, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 12)
    items = list_source(tmp_path / "src")
    for key in ("task_defect", "task_dirt"):
        ckpt = tmp_path / key / "best.pt"
        ckpt.parent.mkdir()
        shutil.copy(models[key], ckpt)
        pred = Predictor.load(ckpt)
        pred.resolve_threshold()
        run_batch(pred, PredictionTable(str(tmp_path / "p.db"), f"predictions_{key}"), items, 8, 0, False)
        rows = PredictionTable(str(tmp_path / "p.db"), f"predictions_{key}").query()
        assert len(rows) == 12 and {r["top1_label"] for r in rows} <= set(pred.classes)
        assert pred.classes == ["normal", key.split("_")[1]]


def test_deploy_manifests_agree_with_the_code():
    from pipeline.cli import ENV, parser
    from pipeline.queue_defaults import GROUP, MESSAGE_BATCH, STREAM
    docs = {}
    for f in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            docs[(d["kind"], d["metadata"]["name"])] = d
    config = docs[("ConfigMap", "pipeline-config")]["data"]
    secret = docs[("Secret", "pipeline-db")]["stringData"]
    assert set(config) | set(secret) <= set(ENV.values())
    assert config["PIPELINE_STREAM"] == STREAM and config["PIPELINE_GROUP"] == GROUP
    scaled = docs[("ScaledObject", "pipeline-consumer")]["spec"]
    trig = scaled["triggers"][0]
    assert trig["type"] == "redis-streams" and int(trig["metadata"]["lagCount"]) > 0
    assert trig["metadata"]["stream"] == STREAM and trig["metadata"]["consumerGroup"] == GROUP
    assert config["REDIS_URL"].split("//")[1].split("/")[0] == trig["metadata"]["address"]
    assert scaled["minReplicaCount"] == 0 and scaled["maxReplicaCount"] >= 1
    deployment = docs[("Deployment", scaled["scaleTargetRef"]["name"])]
    cron = docs[("CronJob", "pipeline-producer")]
    for spec, cmd in ((deployment["spec"]["template"]["spec"], "consume"),
                      (cron["spec"]["jobTemplate"]["spec"]["template"]["spec"], "produce")):
        c = spec["containers"][0]
        assert c["args"][0] == cmd
        parsed = parser().parse_args(c["args"] + (["--checkpoint", "x"] if cmd == "consume" else ["--source", "x"]))
        if cmd == "consume":  # the message batch the benchmark measured (pipeline/README.md "Performance")
            assert parsed.batch_size == MESSAGE_BATCH == parser().parse_args(["consume", "--checkpoint", "x"]).batch_size
        refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in c["envFrom"]}
        assert refs == {"pipeline-config", "pipeline-db"}
    # the worker image itself: tests/test_serving.py


def test_missing_threshold_and_bad_source_are_clear_errors(models, tmp_path):
    import torch
    ckpt = torch.load(models["uni"], weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    write_images(tmp_path / "src", 2)
    proc = pipeline_cli("predict", "--checkpoint", tmp_path / "moved.pt", "--source", tmp_path / "src",
                        "--table", tmp_path / "p.db", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no OOD threshold stored" in proc.stderr and "python -m pipeline threshold" in proc.stderr
    proc = pipeline_cli("predict", "--checkpoint", tmp_path / "moved.pt", "--threshold", "0", "--source",
                        tmp_path / "nowhere", "--table", tmp_path / "p.db", check=False)
    assert proc.returncode == 1 and "no such folder or manifest file" in proc.stderr
    # no detector file and no training data: the paper's score, said in a warning and in every row
    proc = pipeline_cli("predict", "--checkpoint", tmp_path / "moved.pt", "--threshold", "0", "--source",
                        tmp_path / "src", "--table", tmp_path / "p.db", "--no-progress")
    assert "no OOD detector file" in proc.stderr and "python -m models.ood fit" in proc.stderr
    from pipeline.table import PredictionTable
    assert {r["ood_scorer"] for r in PredictionTable(str(tmp_path / "p.db")).query()} == {"max_logit"}
    # ... but a feature detector asked for by name cannot be served without its file
    proc = pipeline_cli("predict", "--checkpoint", tmp_path / "moved.pt", "--threshold", "0", "--score", "knn",
                        "--source", tmp_path / "src", "--table", tmp_path / "p.db", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "python -m models.ood fit" in proc.stderr


def test_a_feature_detector_scores_the_rows_it_is_named_in(uni, tmp_path):
    """--score knn: each row's ood_score is the knn detector's score of that image's features from
    the same forward pass, and the row names the scorer and its threshold."""
    import torch
    from data.loading import ImageSet, collate_skip_bad
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 6)
    pipeline_cli("predict", "--checkpoint", uni, "--source", tmp_path / "src", "--table", tmp_path / "p.db",
                 "--score", "knn", "--no-progress")
    rows = {r["image_id"]: r for r in PredictionTable(str(tmp_path / "p.db")).query()}
    pred = Predictor.load(uni, "knn")
    items = list_source(tmp_path / "src")
    x, _, _ = collate_skip_bad([ImageSet([(it.path, 0) for it in items], pred.transform())[i] for i in range(6)])
    with torch.inference_mode():
        _, feats = pred.ckpt.model(x, features=True)
    expected = pred.filter.detectors["knn"].score(feats)
    got = [rows[it.image_id]["ood_score"] for it in items]
    assert got == pytest.approx(expected.tolist(), abs=1e-3)  # served BatchNorm-folded: equal to rounding
    assert {r["ood_scorer"] for r in rows.values()} == {"knn"}
    assert pred.resolve_threshold() == rows[next(iter(rows))]["ood_threshold"]
