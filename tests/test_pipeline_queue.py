"""Queue mode against a real redis-server on a free loopback port: a consumer killed mid-batch,
Redis restarted mid-run, producer re-runs, bad files, dead letters and SIGTERM. Skipped with the
reason when redis-server is not installed (apt-get install -y redis-server)."""
from __future__ import annotations

import calendar
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.builders import write_bad_files, write_images
from tests.test_pipeline_support import RedisServer, by_path, finish, pipeline_cli, start_consumer

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))
STREAM, GROUP = "pipeline:images", "pipeline-consumers"


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def rows_of(db):
    from pipeline.table import PredictionTable
    t = PredictionTable(str(db))
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


def pending(r, consumer) -> list[str]:
    """Ids of the messages delivered to `consumer` and not yet acknowledged."""
    return [p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer)]


def stopped(proc) -> bool:
    """Whether the kernel has stopped `proc` (a SIGSTOP takes effect asynchronously)."""
    assert proc.poll() is None, f"the consumer exited {proc.returncode}"
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("t", "T")


def stop_holding_a_batch(proc, r, consumer, timeout=60) -> list[str]:
    """SIGSTOP the consumer `proc` at a moment it holds an unacknowledged batch; the batch's ids.
    Stopped, it can neither ack nor read more, so whatever is done to it next happens mid-batch."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.send_signal(signal.SIGSTOP)
        while not stopped(proc):
            time.sleep(0.001)
        held = pending(r, consumer)
        if held:
            return held
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise TimeoutError(f"{consumer} held no batch within {timeout}s")


def test_sigkill_mid_batch_loses_and_duplicates_nothing(models, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 2100, mtime=NOON)
    db = tmp_path / "p.db"
    out = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url).stdout)
    assert out["published"] == 2100
    r = redis.Redis.from_url(server.url, decode_responses=True)
    c0 = start_consumer(models["uni"], db, server.url, "c0", tmp_path)
    stop_holding_a_batch(c0, r, "c0")
    c0.kill()
    c0.communicate()
    stolen = pending(r, "c0")
    assert stolen, "c0 was killed holding a batch"
    # The survivors: nothing is drained while c0's batch is pending, so with --exit-when-empty they
    # cannot exit before one of them has reclaimed it (once idle for --min-idle-ms).
    stats = finish([start_consumer(models["uni"], db, server.url, f"c{i}", tmp_path) for i in (1, 2)])
    rows = rows_of(db)
    ids = [row["image_id"] for row in rows]
    assert len(ids) == len(set(ids)) == 2100, "every image exactly one row"
    assert set(by_path(rows)) == {f"part{i // 500}/img_{i:05d}.jpg" for i in range(2100)}
    assert all(row["status"] in ("ok", "ood") for row in rows)
    group = r.xinfo_groups(STREAM)[0]
    assert group["pending"] == 0 and group["lag"] == 0 and not pending(r, "c0")
    assert sum(s["reclaimed"] for s in stats) >= len(stolen)
    # Re-running the producer for the same day publishes nothing again.
    again = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url,
                                    "--table", db).stdout)
    assert again["published"] == 0 and again["in_table"] == 2100 and r.xlen(STREAM) == 2100


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
    from pipeline.sources import list_source
    from pipeline.streams import produce
    from pipeline.table import PredictionTable
    src = tmp_path / "src"
    write_images(src, 30, mtime=NOON)
    write_images(tmp_path / "src" / "other_day", 5, seed=3, mtime=NOON + 86400)
    first = produce(server.url, src, DAY)
    second = produce(server.url, src, DAY)
    assert (first["listed"], first["published"]) == (30, 30)
    assert (second["published"], second["already_queued"]) == (0, 30)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert r.xlen(STREAM) == 30
    # Once processed, the table alone keeps a re-run (after the day's set expired) from republishing.
    table = PredictionTable(str(tmp_path / "p.db"))
    table.upsert([{"image_id": it.image_id, "model_version": "v", "model_name": "m",
                   "source": "s", "captured_date": DAY, "status": "ok"} for it in list_source(src, DAY)])
    r.delete(f"pipeline:images:published:{DAY}")
    third = produce(server.url, src, DAY, table=table)
    assert third["in_table"] == 30 and third["published"] == 0 and r.xlen(STREAM) == 30


def test_bad_files_dead_letters_and_malformed_messages(models, server, tmp_path):
    from pipeline.model import Predictor
    from pipeline.streams import Consumer, produce
    from pipeline.table import PredictionTable
    src = tmp_path / "src"
    expected = write_bad_files(src / "bad")
    write_images(src / "good", 10)
    for p in src.rglob("*"):
        os.utime(p, (NOON, NOON))
    from pipeline.streams import ensure_group
    r = redis.Redis.from_url(server.url, decode_responses=True)
    ensure_group(r, STREAM, GROUP)
    poison = r.xadd(STREAM, {"image_id": "poison", "path": str(src / "good/part0/img_00000.jpg"),
                             "captured_date": DAY})
    # The poison message has already been delivered 3 times, to consumers that died or failed.
    r.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=1)
    for _ in range(2):
        r.xclaim(STREAM, GROUP, "ghost", 0, [poison])
    r.hset("pipeline:images:errors", poison, "RuntimeError: out of memory")
    assert produce(server.url, src, DAY)["published"] == 18
    r.xadd(STREAM, {"oops": "no image id"})
    pred = Predictor.load(models["uni"])
    pred.resolve_threshold()
    table = PredictionTable(str(tmp_path / "p.db"))
    stats = Consumer(pred, table, server.url, batch_size=8, block_ms=100, min_idle_ms=0,
                     max_deliveries=3, exit_when_empty=True, max_idle_s=30).run()
    rows = by_path(table.query())
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
    assert r.xinfo_groups(STREAM)[0]["pending"] == 0


def test_sigterm_finishes_and_acks_the_current_batch(models, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 1500, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    proc = start_consumer(models["uni"], db, server.url, "c0", tmp_path)
    held = stop_holding_a_batch(proc, r, "c0")
    proc.send_signal(signal.SIGTERM)  # handled when it continues, in the middle of that batch
    proc.send_signal(signal.SIGCONT)
    stats = finish([proc], timeout=60)[0]
    group = r.xinfo_groups(STREAM)[0]
    assert group["pending"] == 0, "the batch in hand was acknowledged before exiting"
    assert group["lag"] > 0, "it stopped early rather than draining the stream"
    rows = rows_of(db)
    assert len(rows) == group["entries-read"] == stats["ok"] + stats["ood"] + stats["error"]
    assert {r.xrange(STREAM, m, m)[0][1]["image_id"] for m in held} <= {row["image_id"] for row in rows}
