"""Queue mode against a real redis-server on a free loopback port: a consumer killed mid-batch,
Redis restarted mid-run, producer re-runs, bad files, dead letters and SIGTERM. Skipped with the
reason when redis-server is not installed (apt-get install -y redis-server)."""
from __future__ import annotations

import calendar
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_pipeline_support import RedisServer, pipeline_cli, tiny_models, write_bad_files, write_images

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory)


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def start_consumer(ckpt, db, url, name, log_dir, *extra):
    cmd = [sys.executable, "-m", "pipeline", "consume", "--checkpoint", str(ckpt), "--table", str(db),
           "--redis", url, "--consumer", name, "--batch-size", "32", "--threads", "1", "--block-ms", "200",
           "--min-idle-ms", "3000", "--exit-when-empty", "--max-idle", "90", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            stderr=open(log_dir / f"{name}.log", "w"))


def finish(procs, timeout=150) -> list[dict]:
    stats = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"consumer exited {p.returncode}"
        stats.append(json.loads(out.strip().splitlines()[-1]))
    return stats


def rows_of(db):
    from pipeline.table import Table
    t = Table(str(db))
    rows = t.query()
    t.close()
    return rows


def wait_rows(db, n, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if db.exists() and len(rows_of(db)) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} rows after {timeout}s")


def test_sigkill_mid_batch_loses_and_duplicates_nothing(models, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 2100, mtime=NOON)
    db = tmp_path / "p.db"
    out = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url).stdout)
    assert out["published"] == 2100
    procs = [start_consumer(models["uni"], db, server.url, f"c{i}", tmp_path) for i in range(3)]
    wait_rows(db, 200)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    for _ in range(100):  # kill c0 while it holds an unacknowledged batch
        if r.xpending_range("pipeline:images", "pipeline-consumers", "-", "+", 10, consumername="c0"):
            break
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    stolen = len(r.xpending_range("pipeline:images", "pipeline-consumers", "-", "+", 1000, consumername="c0"))
    stats = finish(procs[1:])
    rows = rows_of(db)
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 2100, "every image exactly one row"
    assert set(ids) == {f"part{i // 500}/img_{i:05d}.jpg" for i in range(2100)}
    assert all(row["status"] in ("ok", "ood") for row in rows)
    group = r.xinfo_groups("pipeline:images")[0]
    assert group["pending"] == 0 and group["lag"] == 0
    assert stolen > 0, "c0 was killed holding a batch"
    assert sum(s["reclaimed"] for s in stats) >= stolen
    # Re-running the producer for the same day publishes nothing again.
    again = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url,
                                    "--table", db).stdout)
    assert again["published"] == 0 and again["in_table"] == 2100 and r.xlen("pipeline:images") == 2100


def test_consumers_reconnect_when_redis_restarts(models, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 600, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    procs = [start_consumer(models["uni"], db, server.url, f"c{i}", tmp_path) for i in range(2)]
    wait_rows(db, 64)
    server.stop()
    time.sleep(1.5)
    server.start()
    stats = finish(procs)
    assert sum(s["reconnects"] for s in stats) >= 1
    ids = [row["image_id"] for row in rows_of(db)]
    assert len(ids) == len(set(ids)) == 600


def test_producer_rerun_publishes_nothing_twice(server, tmp_path):
    from pipeline.streams import produce
    from pipeline.table import Table
    src = tmp_path / "src"
    write_images(src, 30, mtime=NOON)
    write_images(tmp_path / "src" / "other_day", 5, seed=3, mtime=NOON + 86400)
    first = produce(server.url, src, DAY)
    second = produce(server.url, src, DAY)
    assert (first["listed"], first["published"]) == (30, 30)
    assert (second["published"], second["already_queued"]) == (0, 30)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert r.xlen("pipeline:images") == 30
    # Once processed, the table alone keeps a re-run (after the day's set expired) from republishing.
    table = Table(str(tmp_path / "p.db"))
    table.upsert([{"image_id": f"part0/img_{i:05d}.jpg", "model_version": "v", "model_name": "m",
                   "source": "s", "captured_date": DAY, "status": "ok"} for i in range(30)])
    r.delete(f"pipeline:images:published:{DAY}")
    third = produce(server.url, src, DAY, table=table)
    assert third["in_table"] == 30 and third["published"] == 0 and r.xlen("pipeline:images") == 30


def test_bad_files_dead_letters_and_malformed_messages(models, server, tmp_path):
    from pipeline.model import Predictor
    from pipeline.streams import Consumer, produce
    from pipeline.table import Table
    src = tmp_path / "src"
    expected = write_bad_files(src / "bad")
    write_images(src / "good", 10)
    for p in src.rglob("*"):
        os.utime(p, (NOON, NOON))
    from pipeline.streams import ensure_group
    r = redis.Redis.from_url(server.url, decode_responses=True)
    ensure_group(r, "pipeline:images", "pipeline-consumers")
    poison = r.xadd("pipeline:images", {"image_id": "poison", "path": str(src / "good/part0/img_00000.jpg"),
                                        "captured_date": DAY})
    # The poison message has already been delivered 3 times, to consumers that died or failed.
    r.xreadgroup("pipeline-consumers", "ghost", {"pipeline:images": ">"}, count=1)
    for _ in range(2):
        r.xclaim("pipeline:images", "pipeline-consumers", "ghost", 0, [poison])
    r.hset("pipeline:images:errors", poison, "RuntimeError: out of memory")
    assert produce(server.url, src, DAY)["published"] == 18
    r.xadd("pipeline:images", {"oops": "no image id"})
    pred = Predictor.load(models["uni"])
    pred.resolve_threshold()
    table = Table(str(tmp_path / "p.db"))
    stats = Consumer(pred, table, server.url, batch_size=8, block_ms=100, min_idle_ms=0,
                     max_deliveries=3, exit_when_empty=True, max_idle_s=30).run()
    rows = {row["image_id"]: row for row in table.query()}
    assert len(rows) == 18 and "poison" not in rows
    for name, kind in expected.items():
        status = rows[f"bad/{name}"]["status"]
        assert status == "error" if kind == "error" else status in ("ok", "ood"), name
        if kind == "error":
            assert rows[f"bad/{name}"]["error"].startswith(str(src / "bad" / name))
    dead = {f.get("image_id", "?"): f for _, f in r.xrange("pipeline:images:dead")}
    assert stats["dead_lettered"] == 2 and set(dead) == {"poison", "?"}
    assert dead["poison"]["error"] == "RuntimeError: out of memory" and int(dead["poison"]["deliveries"]) == 4
    assert "malformed" in dead["?"]["error"]
    assert r.xinfo_groups("pipeline:images")[0]["pending"] == 0


def test_sigterm_finishes_and_acks_the_current_batch(models, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 1500, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    proc = start_consumer(models["uni"], db, server.url, "c0", tmp_path)
    wait_rows(db, 64)
    proc.send_signal(signal.SIGTERM)
    stats = finish([proc], timeout=60)[0]
    r = redis.Redis.from_url(server.url, decode_responses=True)
    group = r.xinfo_groups("pipeline:images")[0]
    assert group["pending"] == 0, "the batch in hand was acknowledged before exiting"
    assert group["lag"] > 0, "it stopped early rather than draining the stream"
    assert len(rows_of(db)) == group["entries-read"] == stats["ok"] + stats["ood"] + stats["error"]
