"""Batch mode of the deployed pipeline (no servers): table rows, bad files, thresholds, manifests,
the inspectors' query, task-centric tables, `--checkpoint` releasing its bundle, and the deploy/
manifests agreeing with the code."""
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
def uni(bundles):
    """The uni model's release bundle."""
    return bundles["uni"]


def test_predict_folder_writes_one_row_per_file_and_bad_files_become_errors(models, tmp_path, tiny_data):
    """Through --checkpoint: the first run releases the checkpoint's bundle into bundles/ beside it
    and serves it; every row carries the bundle id, its default scorer and that scorer's threshold."""
    ckpt = tmp_path / "model" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(models["uni"], ckpt)
    src = tmp_path / "src"
    write_images(src / "good", 40)
    expected = write_bad_files(src / "bad")
    db = tmp_path / "p.db"
    proc = pipeline_cli("predict", "--checkpoint", ckpt, "--source", src, "--table", db, "--workers", "2",
                        "--batch-size", "16")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 48 and summary["error"] == 5 and summary["ok"] + summary["ood"] == 43
    assert summary["images_per_s"] > 0 and "predict" in proc.stderr  # the tqdm bar
    from pipeline.bundle import Bundle
    [released] = (ckpt.parent / "bundles").iterdir()
    bundle = Bundle.load(released)
    assert summary["version"] == bundle.id and summary["bundle"] == str(released)

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
    assert {r["ood_scorer"] for r in rows.values()} == {bundle.default_scorer}
    assert {r["ood_threshold"] for r in rows.values()} == {bundle.threshold()}
    assert good["model_name"] == "pmg-resnet18-uni" and {r["model_version"] for r in rows.values()} == {bundle.id}
    assert good["captured_date"] and good["processed_at"]
    # the second run finds the bundle released from this checkpoint's content: nothing is released again
    again = pipeline_cli("predict", "--checkpoint", ckpt, "--source", src / "good", "--table", db, "--no-progress")
    assert json.loads(again.stdout.strip().splitlines()[-1])["version"] == bundle.id
    assert [p.name for p in (ckpt.parent / "bundles").iterdir()] == [bundle.id]


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
    proc = run("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", db, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["images"] == 6
    from pipeline.table import PredictionTable
    assert len(PredictionTable(str(db)).query()) == 6
    proc = run("consume", "--bundle", uni, "--table", db, "--exit-when-empty")
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
        pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", db, "--top2", rule,
                     *(["--streams", "1"] if rule == "plain" else []))
        rows[rule] = {r["image_id"]: r for r in PredictionTable(str(db)).query()}
    from pipeline.model import Predictor
    exclusive = Predictor.load(uni).heads.exclusive
    assert exclusive and len(rows["plain"]) == 12 and rows["plain"].keys() == rows["coherent"].keys()
    for i, p in rows["plain"].items():
        c = rows["coherent"][i]
        assert (p["top2_rule"], c["top2_rule"]) == ("plain", "coherent") and p["top1_label"] == c["top1_label"]
        assert frozenset((c["top1_label"], c["top2_label"])) not in exclusive
    proc = pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", tmp_path / "x.db",
                        "--top2", "best", check=False)
    assert proc.returncode == 2 and "--top2: invalid choice: 'best'" in proc.stderr


def test_threshold_and_score_overrides(uni, tmp_path):
    """--threshold overrides the bundle's threshold (1e9: everything is OOD); --score another scorer
    takes that scorer's threshold from the bundle; a threshold that is no finite number is refused
    before anything runs."""
    from pipeline.batch import run_batch
    from pipeline.bundle import Bundle
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    write_images(tmp_path / "src", 6)
    bundle = Bundle.load(uni)
    assert Predictor.load(uni).threshold == bundle.threshold()
    assert Predictor.load(uni, "energy").threshold == bundle.threshold("energy")
    seen = []
    run_batch(Predictor.load(uni, threshold=1e9), None, list_source(tmp_path / "src"), 4, 0, False,
              on_rows=seen.extend)
    assert [r["status"] for r in seen] == ["ood"] * 6 and all(r["is_ood"] for r in seen)
    for bad in ("nan", "inf", "x"):
        proc = pipeline_cli("predict", "--bundle", uni, "--threshold", bad, "--source", tmp_path / "src",
                            "--table", tmp_path / "p.db", check=False)
        assert proc.returncode == 2 and "--threshold: must be a finite number" in proc.stderr
        assert not (tmp_path / "p.db").exists()


def test_manifest_dates_filter_and_the_inspectors_query(uni, tmp_path):
    imgs = write_images(tmp_path / "img", 9)
    manifest = tmp_path / "manifest.csv"
    lines = ["path,captured_date,image_id"]
    lines += [f"img/{p.parent.name}/{p.name},2026-11-2{1 + i % 2},car-{i}" for i, p in enumerate(imgs)]
    lines += ["img/missing.jpg,2026-11-22,car-missing"]
    manifest.write_text("\n".join(lines) + "\n")
    db = tmp_path / "p.db"
    pipeline_cli("predict", "--bundle", uni, "--source", manifest, "--date", "2026-11-22", "--table",
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


def test_task_centric_counterpart_writes_one_table_per_model(bundles, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 12)
    items = list_source(tmp_path / "src")
    for key in ("task_defect", "task_dirt"):
        pred = Predictor.load(bundles[key])
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
        parsed = parser().parse_args(c["args"] + (["--bundle", "x"] if cmd == "consume" else ["--source", "x"]))
        if cmd == "consume":  # the message batch the benchmark measured (pipeline/README.md "Performance")
            assert parsed.batch_size == MESSAGE_BATCH == parser().parse_args(["consume", "--bundle", "x"]).batch_size
        refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in c["envFrom"]}
        assert refs == {"pipeline-config", "pipeline-db"}
    # the worker image itself: tests/test_serving.py


def test_model_and_source_mistakes_are_one_error_line(models, uni, tmp_path):
    """No model, both kinds of model, a checkpoint whose training data is gone (its bundle cannot be
    released here), a folder that is no bundle, and a missing source: one `error:` line each."""
    import torch
    ckpt = torch.load(models["uni"], weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    write_images(tmp_path / "src", 2)
    common = ["--source", tmp_path / "src", "--table", tmp_path / "p.db"]
    cases = {(): "give the model as --bundle DIR", ("--bundle", uni, "--checkpoint", models["uni"]): "not both",
             ("--checkpoint", tmp_path / "moved.pt"): str(tmp_path / "gone"),
             ("--bundle", tmp_path / "src"): "bundle.json: missing (not a bundle folder)"}
    for model, message in cases.items():
        proc = pipeline_cli("predict", *model, *common, check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and message in proc.stderr
    proc = pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "nowhere", "--table", tmp_path / "p.db",
                        check=False)
    assert proc.returncode == 1 and "no such folder or manifest file" in proc.stderr
    assert not (tmp_path / "p.db").exists()


def test_a_feature_detector_scores_the_rows_it_is_named_in(uni, tmp_path):
    """--score knn: each row's ood_score is the bundle's knn detector's score of that image's
    features from the same forward pass, and the row names the scorer and its threshold."""
    from pipeline.batch import Decoder, collate
    from pipeline.model import Predictor
    from pipeline.outputs import DETECTOR_SCORERS
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 6)
    pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", tmp_path / "p.db",
                 "--score", "knn", "--no-progress")
    rows = {r["image_id"]: r for r in PredictionTable(str(tmp_path / "p.db")).query()}
    pred = Predictor.load(uni, "knn")
    items = list_source(tmp_path / "src")
    images = Decoder([it.path for it in items], pred.pixels)
    x, good, _ = collate([images[i] for i in range(len(images))])
    _, feats = pred.forward(x)
    expected = DETECTOR_SCORERS["knn"](feats, pred.bundle.detector("knn"))
    assert [rows[it.image_id]["ood_score"] for it in items] == pytest.approx(expected.tolist(), abs=1e-6)
    assert {r["ood_scorer"] for r in rows.values()} == {"knn"}
    assert {r["ood_threshold"] for r in rows.values()} == {pred.bundle.threshold("knn")}


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--threads", "-1"), ("--streams", "0"),
                                        ("--threshold", "nan"), ("--device", "tpu")])
def test_bad_flag_values_are_refused_before_anything_runs(uni, tmp_path, flag, value):
    write_images(tmp_path / "src", 2)
    proc = pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", tmp_path / "p.db",
                        flag, value, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and flag in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "p.db").exists()
    proc = pipeline_cli("consume", "--bundle", uni, "--table", tmp_path / "p.db", "--max-deliveries", "0",
                        check=False)
    assert proc.returncode == 2 and "--max-deliveries: must be a whole number of at least 1" in proc.stderr


def test_cuda_without_its_execution_provider_is_one_error_line(uni, tmp_path):
    import onnxruntime
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA execution provider")
    write_images(tmp_path / "src", 2)
    proc = pipeline_cli("predict", "--bundle", uni, "--source", tmp_path / "src", "--table", tmp_path / "p.db",
                        "--device", "cuda", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --device cuda needs ONNX Runtime's CUDA")
    assert "Traceback" not in proc.stderr and not (tmp_path / "p.db").exists()


@pytest.mark.parametrize("url,message", [
    ("sqlite:///", "a SQLite URL names its file"), ("sqlite://x.db", "a SQLite URL names its file"),
    ("mysql://root@127.0.0.1/x", "unknown database scheme 'mysql://'"),
    ("postgresql://user:s3cret@[::1", "not a usable PostgreSQL URL"), ("NOT_A_DB", "not a SQLite database")])
def test_a_table_url_that_names_no_usable_database_is_one_line(uni, tmp_path, url, message):
    """Refused before any image is read, with nothing created where the URL pointed and no
    password shown."""
    write_images(tmp_path / "src", 2)
    if url == "NOT_A_DB":
        url = str(tmp_path / "notes.txt")
        (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--bundle", str(uni), "--source",
                           str(tmp_path / "src"), "--table", url, "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and "s3cret" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src"] + (["notes.txt"] if "notes" in url else []))


def test_a_read_only_database_is_an_outage_and_a_program_limit_is_the_rows_fault():
    """What a consumer does with a PostgreSQL error is decided by its SQLSTATE: a read-only
    transaction (a failover) is retried like an outage, never dead-lettered; a program limit (an
    index row too large) is the row's own fault, never retried for ever."""
    import sqlite3

    import psycopg.errors as pg

    from pipeline.table import unavailable
    assert unavailable(pg.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"))
    assert unavailable(pg.AdminShutdown("terminating connection")) and unavailable(sqlite3.OperationalError("locked"))
    assert not unavailable(pg.ProgramLimitExceeded("index row size 3216 exceeds btree version 4 maximum 2704"))
    assert not unavailable(pg.UniqueViolation("duplicate key")) and not unavailable(ValueError("bad row"))


def test_a_row_the_table_refuses_is_named_and_the_rest_of_its_batch_lands(uni, tmp_path, capsys):
    """Batch mode: when the table refuses one row for its content, the batch is written row by row;
    that row is named on stderr and counted as `refused`, every other row lands."""
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable

    class Picky(PredictionTable):
        def upsert(self, rows):
            if any(r["source"].endswith("img_00003.jpg") for r in rows):
                raise ValueError("index row size exceeds the maximum")
            super().upsert(rows)

    write_images(tmp_path / "src", 10)
    table = Picky(str(tmp_path / "p.db"))
    summary = run_batch(Predictor.load(uni), table, list_source(tmp_path / "src"), 8, 0, False)
    assert summary["refused"] == 1 and summary["images"] == 10 and summary["ok"] + summary["ood"] == 9
    assert len(table.query()) == 9 and "img_00003.jpg: the table refused its row (ValueError" in capsys.readouterr().err
