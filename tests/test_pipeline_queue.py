"""Queue mode against a real redis-server on a free loopback port: a consumer killed mid-batch,
Redis restarted mid-run, producer re-runs, bad files, dead letters and SIGTERM. Skipped with the
reason when redis-server is not installed (apt-get install -y redis-server)."""
from __future__ import annotations

import calendar
import json
import os
import signal
import time

import pytest

from tests.builders import write_bad_files, write_images
from tests.test_pipeline_support import (RedisServer, by_path, finish, pending, pipeline_cli, rows_of, start_consumer,
                                         stop_holding_a_batch, wait_for, wait_rows)

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))
STREAM, GROUP = "pipeline:images", "pipeline-consumers"


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def test_sigkill_mid_batch_loses_and_duplicates_nothing(bundles, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 2100, mtime=NOON)
    db = tmp_path / "p.db"
    out = json.loads(pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url).stdout)
    assert out["published"] == 2100
    r = redis.Redis.from_url(server.url, decode_responses=True)
    c0 = start_consumer(bundles["uni"], db, server.url, "c0", tmp_path)
    stop_holding_a_batch(c0, r, "c0")
    c0.kill()
    c0.communicate()
    stolen = pending(r, "c0")
    assert stolen, "c0 was killed holding a batch"
    # The survivors: nothing is drained while c0's batch is pending, so with --exit-when-empty they
    # cannot exit before one of them has reclaimed it (once idle for --min-idle-ms).
    stats = finish([start_consumer(bundles["uni"], db, server.url, f"c{i}", tmp_path) for i in (1, 2)])
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
    # (entries-added, not XLEN: the consumers trim what they have acknowledged)
    assert again["published"] == 0 and again["in_table"] == 2100 and r.xinfo_stream(STREAM)["entries-added"] == 2100


# PIPELINE_SOAK=20 repeats the restart test 20 times in one session; under load:
#   PIPELINE_SOAK=20 python bench/cpu_burner.py --procs 2 -- python -m pytest -q \
#       tests/test_pipeline_queue.py::test_consumers_reconnect_when_redis_restarts
SOAK = int(os.environ.get("PIPELINE_SOAK", "1"))


@pytest.mark.parametrize("attempt", range(SOAK))
def test_consumers_reconnect_when_redis_restarts(bundles, server, tmp_path, attempt):
    src = tmp_path / "src"
    write_images(src, 600, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    procs = [start_consumer(bundles["uni"], db, server.url, f"c{i}", tmp_path) for i in range(2)]
    wait_rows(db, 64)
    server.stop()
    time.sleep(6)  # longer than --max-backoff (5 s): the consumers retry at the capped backoff
    server.start()
    stats = finish(procs)
    assert sum(s["reconnects"] for s in stats) >= 1
    ids = [row["image_id"] for row in rows_of(db)]
    assert len(ids) == len(set(ids)) == 600
    log = (tmp_path / "c0.log").read_text() + (tmp_path / "c1.log").read_text()
    assert '"redis_reconnected"' in log and '"outage_s"' in log  # each outage and its end are logged


def test_an_outage_longer_than_max_outage_ends_a_consumer_with_one_line(bundles, server, tmp_path):
    proc = start_consumer(bundles["uni"], tmp_path / "p.db", server.url, "c0", tmp_path, "--threshold", "0",
                          "--max-outage", "3", "--max-backoff", "0.5", until_empty=False)
    log = tmp_path / "c0.log"
    wait_for(lambda: "consumer_start" in log.read_text(), 120, "the consumer's start")
    server.stop()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = log.read_text().splitlines()
    assert "Traceback" not in log.read_text()
    assert lines[-1].startswith("error: Redis at --redis / REDIS_URL unreachable for") and "--max-outage 3" in lines[-1]
    waits = [json.loads(x)["retry_in_s"] for x in lines if '"redis_unavailable"' in x]
    assert len(waits) >= 3 and waits[:3] == [0.1, 0.2, 0.4] and max(waits) == 0.5  # backoff, capped


def test_producer_rerun_publishes_nothing_twice(server, tmp_path):
    from pipeline.sources import list_source
    from pipeline.publish import produce
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


def test_bad_files_dead_letters_and_malformed_messages(bundles, server, tmp_path):
    from pipeline.model import Predictor
    from pipeline.publish import produce
    from pipeline.streams import Consumer
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
    pred = Predictor.load(bundles["uni"])
    table = PredictionTable(str(tmp_path / "p.db"))
    stats = Consumer(pred, table, server.url, batch_size=8, block_ms=100, min_idle_ms=0,
                     max_deliveries=3, exit_when_empty=True, max_idle_s=30, streams=3).run()
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


def test_sigterm_finishes_and_acks_the_current_batch(bundles, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 1500, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    proc = start_consumer(bundles["uni"], db, server.url, "c0", tmp_path)
    held = stop_holding_a_batch(proc, r, "c0")
    held_ids = {r.xrange(STREAM, m, m)[0][1]["image_id"] for m in held}  # read now: acked entries get trimmed
    proc.send_signal(signal.SIGTERM)  # handled when it continues, in the middle of that batch
    proc.send_signal(signal.SIGCONT)
    stats = finish([proc], timeout=60)[0]
    group = r.xinfo_groups(STREAM)[0]
    assert group["pending"] == 0, "the batch in hand was acknowledged before exiting"
    assert group["lag"] > 0, "it stopped early rather than draining the stream"
    rows = rows_of(db)
    assert len(rows) == group["entries-read"] == stats["ok"] + stats["ood"] + stats["error"]
    assert held_ids <= {row["image_id"] for row in rows}


def test_a_full_redis_is_one_line_and_consumers_still_drain_it(bundles, server, tmp_path):
    """Redis at maxmemory with noeviction (deploy/k8s/redis.yaml): produce, redrive and a new
    group say so in one line naming the fixes; consumers whose group exists start and drain the
    stream; a produce re-run once there is room publishes only the rest."""
    write_images(tmp_path / "first", 120, mtime=NOON)
    write_images(tmp_path / "more", 120, mtime=NOON, seed=5)
    assert json.loads(pipeline_cli("produce", "--source", tmp_path / "first", "--date", DAY, "--redis",
                                   server.url).stdout)["published"] == 120
    r = redis.Redis.from_url(server.url, decode_responses=True)
    r.config_set("maxmemory", r.info("memory")["used_memory"])  # full now: every write is refused
    proc = pipeline_cli("produce", "--source", tmp_path / "more", "--date", DAY, "--redis", server.url, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: Redis is full and refuses writes")
    assert "python -m pipeline trim" in proc.stderr and "maxmemory" in proc.stderr
    db = tmp_path / "p.db"
    [stats] = finish([start_consumer(bundles["uni"], db, server.url, "c0", tmp_path, "--trim-interval", "0")])
    assert stats["ok"] + stats["ood"] == r.xlen(STREAM) and len(rows_of(db)) == r.xlen(STREAM) >= 120
    assert r.xinfo_groups(STREAM)[0]["pending"] == 0
    r.config_set("maxmemory", 0)  # room again: the re-run publishes what the refused run did not
    out = json.loads(pipeline_cli("produce", "--source", tmp_path / "more", "--date", DAY, "--redis",
                                  server.url).stdout)
    assert out["published"] + out["already_queued"] == 120 and r.xlen(STREAM) == 240
