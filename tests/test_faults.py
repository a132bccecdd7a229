"""The fault matrix (docs/reliability.md, "The fault matrix"): every fault there lands on the right
side, the message's (an error row or a dead letter for it alone) or the infrastructure's (retried,
nothing dead-lettered), and one bad input never stops the rest. The faults not run here are
pinned by the test the table names; `test_the_fault_matrix_names_a_test_for_every_fault` keeps the
table and the tests together. Real redis-server (skipped with the reason where it is missing) and
SQLite; PostgreSQL's rows in tests/test_pipeline_postgres.py."""
from __future__ import annotations

import calendar
import json
import os
import re
import shutil

import pytest
import yaml

from tests.builders import write_deep_image, write_images
from tests.conftest import ROOT, TINY_TRAIN, run_cli
from tests.test_pipeline_support import (GROUP, STREAM, RedisServer, finish, pipeline_cli, rows_of,
                                         start_consumer)

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))
DEAD = f"{STREAM}:dead"


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def dated(path, when=NOON):
    os.utime(path, (when, when))
    return path


def test_one_source_of_every_bad_input_one_row_per_path_and_dead_letters_for_the_bad_messages(bundles, server,
                                                                                            tmp_path):
    """A day's source with good images, a truncated file, a name that is not UTF-8 and a 3.2 KB
    path, plus queued messages no producer writes (a NUL byte, a 3 KB image id, no path): the
    producer skips the name it cannot hold, consumers dead-letter exactly the three bad messages,
    each with its own reason, and every other message is a row (messages sent = rows + dead
    letters). The truncated file, later complete, supersedes its error row: one row per path, in
    batch mode as in queue mode."""
    from pipeline.sources import ID_CHARS
    from pipeline.table import PredictionTable
    src = tmp_path / "src"
    write_images(src, 4, mtime=NOON)
    whole = (src / "part0" / "img_00000.jpg").read_bytes()
    late = src / "late.jpg"  # an upload cut off half way
    late.write_bytes(whole[: len(whole) // 2])
    dated(late)
    cp949 = os.path.join(os.fsencode(src), "차량.jpg".encode("cp949"))
    with open(cp949, "wb") as f:
        f.write(whole)
    dated(cp949)
    deep = write_deep_image(src, mtime=NOON)
    assert len(str(deep.relative_to(src))) >= 3200

    produced = pipeline_cli("produce", "--source", src, "--date", DAY, "--look-back", "1", "--redis", server.url)
    out = json.loads(produced.stdout)
    assert (out["listed"], out["skipped"], out["published"]) == (6, 1, 6)
    assert "\\xc2\\xf7\\xb7\\xae.jpg: skipped" in produced.stderr
    r = redis.Redis.from_url(server.url, decode_responses=True)
    bad = {"nul": {"image_id": "nul.jpg", "path": f"{src}/a\x00b.jpg", "captured_date": DAY},
           "long id": {"image_id": "x" * 3000, "path": str(src / "part0" / "img_00001.jpg"), "captured_date": DAY},
           "no path": {"image_id": "no-path.jpg", "captured_date": DAY}}
    for fields in bad.values():
        r.xadd(STREAM, fields)
    db = tmp_path / "queue.db"
    [first] = finish([start_consumer(bundles["uni"], db, server.url, "c0", tmp_path)])
    sent = r.xinfo_stream(STREAM)["entries-added"]
    rows = rows_of(db)
    assert sent == 9 == len(rows) + r.xlen(DEAD) and first["dead_lettered"] == 3
    reasons = {f["image_id"][:10]: f["error"] for _, f in r.xrange(DEAD)}
    assert "NUL byte" in reasons["nul.jpg"] and "3000 bytes" in reasons["x" * 10] and "fields" in reasons["no-path.jp"]
    by_source = {row["source"]: row for row in rows}
    assert by_source[str(late)]["status"] == "error" and "truncated" in by_source[str(late)]["error"].lower()
    assert by_source[str(deep)]["status"] in ("ok", "ood") and len(by_source[str(deep)]["image_id"]) <= ID_CHARS
    assert all(row["status"] in ("ok", "ood") for s, row in by_source.items() if s != str(late))

    batch = tmp_path / "batch.db"
    predict = lambda: json.loads(pipeline_cli("predict", "--bundle", bundles["uni"], "--source", src,  # noqa: E731
                                              "--table", batch, "--no-progress").stdout)
    assert {k: predict()[k] for k in ("error", "skipped", "images")} == {"error": 1, "skipped": 1, "images": 6}
    late.write_bytes(whole)  # the rest of the upload arrives
    dated(late)
    again = predict()
    assert again["error"] == 0 and again["images"] == 6
    table = PredictionTable(str(batch))
    assert sum(table.counts().values()) == 6 and "error" not in table.counts()
    table.close()

    out = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--look-back", "1", "--redis",
                                  server.url, "--table", db).stdout)
    assert out["published"] == 1  # the complete file: a new content hash, a new id
    [second] = finish([start_consumer(bundles["uni"], db, server.url, "c1", tmp_path)])
    rows = rows_of(db)
    written = sum(s[k] for s in (first, second) for k in ("ok", "ood", "error"))
    assert r.xinfo_stream(STREAM)["entries-added"] == 10 == written + r.xlen(DEAD)
    assert len(rows) == len({row["source"] for row in rows}) == 6, "one current row per path"
    assert all(row["status"] in ("ok", "ood") for row in rows)


def test_a_file_that_arrives_after_the_nightly_run_is_published_by_a_later_one(server, tmp_path):
    """The nightly CronJob publishes yesterday at 00:30; a photo dated yesterday copied in after it
    is published by the next night's run, which looks back --look-back days (7 by default), once."""
    src = tmp_path / "src"
    write_images(src / "on_time", 3, mtime=NOON)
    write_images(src / "old", 1, seed=4, mtime=NOON - 7 * 86400)  # 2026-11-13: before either window
    produce = lambda *a: json.loads(pipeline_cli("produce", "--source", src, "--redis", server.url,  # noqa: E731
                                                 *a).stdout)
    assert produce("--date", DAY)["published"] == 3  # the 7 days up to 2026-11-20: 14th to 20th
    write_images(src / "late", 1, seed=9, mtime=NOON)  # dated 2026-11-20, copied in after the run
    assert produce("--date", "2026-11-21", "--look-back", "1")["published"] == 0  # that day alone misses it
    nightly = produce("--date", "2026-11-21")
    assert (nightly["published"], nightly["from"], nightly["to"], nightly["days"]) == (1, "2026-11-15", "2026-11-21", 7)
    assert produce("--date", "2026-11-21")["published"] == 0 and produce("--date", DAY)["published"] == 0
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert r.xlen(STREAM) == 4  # older than the window: a backfill's (--from/--to)
    for flags, exit_code, says in ((["--look-back", "31"], 1, "at most 30 days"),
                                   (["--look-back", "0"], 2, "at least 1"),
                                   (["--from", "2026-11-01", "--look-back", "3"], 1, "--look-back goes with --date")):
        proc = pipeline_cli("produce", "--source", src, "--redis", server.url, *flags, check=False)
        assert proc.returncode == exit_code and "Traceback" not in proc.stderr
        assert says in proc.stderr.strip().splitlines()[-1] and "error:" in proc.stderr.strip().splitlines()[-1]
    assert r.xlen(STREAM) == 4


def test_keda_sees_the_waiting_work_after_a_redis_restart(bundles, server, tmp_path):
    """After a restart from an append-only file the group's lag may be NULL (Redis 7.0: until a
    consumer reads to the end), which KEDA's lag trigger reads as no work; the stream's length, the
    third trigger, counts the waiting work, and falls to 0 once consumers have drained and trimmed it."""
    from pipeline.model import Predictor
    from pipeline.publish import produce
    from pipeline.streams import Consumer
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src", 10, mtime=NOON)
    produce(server.url, tmp_path / "src", DAY)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    taken = [m for m, _ in r.xreadgroup(GROUP, "gone", {STREAM: ">"}, count=4)[0][1]]
    r.xack(STREAM, GROUP, *taken)  # a pod that did its share and was scaled away: nothing pending
    server.stop()
    server.start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    redis_yaml = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "redis.yaml").read_text())
    (image,) = {c["image"] for d in redis_yaml if d and d["kind"] == "StatefulSet"
                for c in d["spec"]["template"]["spec"]["containers"]}
    tested = r.info("server")["redis_version"]
    assert image == f"redis:{tested}", f"the deploy pins {image}; these tests ran on Redis {tested}"
    group = r.xinfo_groups(STREAM)[0]
    waiting = len(r.xrange(STREAM, f"({group['last-delivered-id']}", "+"))
    assert waiting == 6 and group["pending"] == 0
    assert group["lag"] in (None, waiting), f"lag {group['lag']} after a restart, {waiting} waiting"
    assert r.xlen(STREAM) >= waiting  # what the streamLength trigger reads: never less than the work
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text()) if d]
    length = [t["metadata"] for t in docs[0]["spec"]["triggers"] if "streamLength" in t["metadata"]]
    assert length and length[0]["stream"] == STREAM and "consumerGroup" not in length[0]
    table = PredictionTable(str(tmp_path / "p.db"))
    stats = Consumer(Predictor.load(bundles["uni"]), table, server.url, batch_size=8, block_ms=100, min_idle_ms=0,
                     exit_when_empty=True, max_idle_s=30).run()
    table.close()
    assert stats["ok"] + stats["ood"] == 6 and r.xlen(STREAM) == 0  # trimmed on its way out: no work left
    assert r.xinfo_groups(STREAM)[0]["lag"] == 0


def test_a_run_folder_never_mixes_two_runs_and_a_non_finite_validation_stops_before_any_write(artifacts, tiny_data,
                                                                                            tmp_path):
    """A fresh run over a folder holding an earlier run is refused with one line naming the fixes
    (`claim_run_folder`, the first thing train.py does); --overwrite clears it. Weights whose
    BatchNorm statistics are NaN train with a finite loss (training uses the batch's statistics)
    but validate to NaN: exit 1, one line, no checkpoint."""
    import torch
    import torchvision

    from train import claim_run_folder, get_args_parser
    run = tmp_path / "task_dirt" / "exp1"
    shutil.copytree(artifacts / "task_dirt" / "exp1", run)
    (run / "epoch_9.pt").write_bytes((run / "best.pt").read_bytes())
    before = sorted(p.name for p in run.iterdir())
    argv = ["train.py", "--data", tiny_data, "--paradigm", "task", "--task", "dirt", "--epochs", "1",
            "--artifacts", tmp_path, *TINY_TRAIN]
    for flags, says in (([], f"error: run folder {run} already holds an earlier run (best.pt, "),
                        (["--resume", "--overwrite"], "error: give --resume")):
        with pytest.raises(SystemExit) as refused:  # what train.py exits with, before anything is written
            claim_run_folder(run, get_args_parser().parse_args(flags))
        assert str(refused.value.code).startswith(says) and "\n" not in str(refused.value.code)
    assert "--resume" in str(refused.value.code) and sorted(p.name for p in run.iterdir()) == before
    weights = torchvision.models.resnet18(weights=None).state_dict()
    weights["bn1.running_mean"].fill_(float("nan"))
    torch.save(weights, tmp_path / "nan_stats.pth")
    proc = run_cli(*argv, "--overwrite", "--pretrained", tmp_path / "nan_stats.pth", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: training diverged in epoch 1: val loss nan")
    assert f"cleared {run}" in proc.stdout and sorted(p.name for p in run.iterdir()) == ["args.yaml"]


# Every row of the fault table: a key phrase of its fault in docs/reliability.md's matrix.
FAULTS = ["not valid UTF-8", "NUL byte", "read-only", "too long for the index", "maxmemory", "sqlite:///",
          "mysql://", "postgresql://[::1", "--batch-size 0", ".threshold.json", "password", "--lr 1e3",
          "first seen truncated", "after the nightly", "after a Redis restart"]


def test_the_fault_matrix_names_a_test_for_every_fault():
    text = (ROOT / "docs" / "reliability.md").read_text()
    section = text.split("## The fault matrix", 1)[1].split("\n## ", 1)[0]
    matrix = next(block for block in section.split("\n\n") if block.startswith("| fault |"))
    rows = matrix.splitlines()[2:]
    for fault in FAULTS:
        assert sum(fault in row.split(" | ")[0] for row in rows) == 1, f"no one row for '{fault}'"
    for row in rows:
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", row)
        assert named, f"no test named for: {row[:80]}"
        for path, test in named:
            assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), re.M), f"{path}::{test} does not exist"
    assert "docs/reliability.md" in (ROOT / "README.md").read_text()
