"""The queue stays bounded: acknowledged entries are trimmed, and a trim never
removes an entry that some consumer group still has pending or has not been given yet, so a
consumer killed mid-batch, a trim, and a restart still lose nothing; the group's lag, which KEDA
scales on, stays exact. And deploy/k8s/keda.yaml activates on one waiting image."""
from __future__ import annotations

import calendar
import json

import pytest
import yaml

from tests.builders import write_images
from tests.conftest import ROOT
from tests.test_pipeline_support import (GROUP, STREAM, RedisServer, finish, pending, pipeline_cli, rows_of,
                                         start_consumer, stop_holding_a_batch, wait_rows)

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def exists(r, message_id) -> bool:
    return bool(r.xrange(STREAM, message_id, message_id))


def true_lag(r, group) -> int:
    """Entries after the group's last-delivered id, counted one by one."""
    last = next(g for g in r.xinfo_groups(STREAM) if g["name"] == group)["last-delivered-id"]
    return len(r.xrange(STREAM, f"({last}", "+"))


def test_trimming_never_removes_a_pending_entry(bundles, server, tmp_path):
    src = tmp_path / "src"
    write_images(src, 600, mtime=NOON)
    db = tmp_path / "p.db"
    pipeline_cli("produce", "--source", src, "--date", DAY, "--redis", server.url)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    # A second group (say an audit job) that took 100 entries and acknowledged only 90 of them.
    r.xgroup_create(STREAM, "audit", id="0")
    taken = [m for m, _ in r.xreadgroup("audit", "a0", {STREAM: ">"}, count=100)[0][1]]
    r.xack(STREAM, "audit", *taken[:90])
    # A consumer that never trims on its own, killed while it holds a batch.
    c0 = start_consumer(bundles["uni"], db, server.url, "c0", tmp_path, "--trim-interval", "0")
    wait_rows(db, 64)
    held = stop_holding_a_batch(c0, r, "c0")
    c0.kill()
    c0.communicate()
    assert pending(r, "c0") == held
    out = json.loads(pipeline_cli("trim", "--redis", server.url).stdout)
    assert out["trimmed"] > 0 and out["length"] == 600 - out["trimmed"]
    assert all(exists(r, m) for m in held + taken[90:]), "a pending entry was trimmed"
    assert out["kept_from"] == min(held[0], taken[90], key=lambda m: tuple(map(int, m.split("-"))))
    # (c0 may have been stopped before or after entry 90, so which of the two held the trim back varies)
    for group in (GROUP, "audit"):  # what KEDA reads stays right after the trim
        info = next(g for g in r.xinfo_groups(STREAM) if g["name"] == group)
        assert info["lag"] == true_lag(r, group)
    # Restarted consumers (trimming after every batch) reclaim the dead one's batch: nothing lost.
    stats = finish([start_consumer(bundles["uni"], db, server.url, f"c{i}", tmp_path, "--trim-interval", "0.001")
                    for i in (1, 2)])
    ids = [row["image_id"] for row in rows_of(db)]
    assert len(ids) == len(set(ids)) == 600
    assert sum(s["reclaimed"] for s in stats) >= len(held)
    order = lambda m: tuple(map(int, m.split("-")))  # noqa: E731
    if order(held[0]) < order(taken[90]):  # the dead consumer's batch held back the first trim: they trim after it
        assert sum(s["trimmed"] for s in stats) > 0
    # The audit group still needs its 10 pending entries and all it has not read: they stay.
    assert r.xlen(STREAM) == 600 - 90 and all(exists(r, m) for m in taken[90:])
    r.xgroup_destroy(STREAM, "audit")
    assert json.loads(pipeline_cli("trim", "--redis", server.url).stdout)["length"] == 0
    group = r.xinfo_groups(STREAM)[0]
    assert group["pending"] == 0 and group["lag"] == 0


def test_trim_keeps_a_stream_without_groups_and_a_missing_stream_is_no_error(server):
    from pipeline.retention import trim
    r = redis.Redis.from_url(server.url, decode_responses=True)
    assert trim(r, STREAM)["trimmed"] == 0
    r.xadd(STREAM, {"image_id": "a", "path": "a.jpg"})
    assert trim(r, STREAM) == {"trimmed": 0, "kept_from": None, "length": 1, "stream": STREAM}


def test_keda_activates_on_one_image_and_keeps_a_pod_for_pending_work():
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "keda.yaml").read_text()) if d]
    triggers = [t["metadata"] for t in docs[0]["spec"]["triggers"]]
    lag = next(t for t in triggers if "lagCount" in t)
    held = next(t for t in triggers if "pendingEntriesCount" in t)
    # KEDA activates a scaled-to-zero deployment when lag > activationLagCount: 0 lets one image do it
    assert lag["activationLagCount"] == "0"
    # lag does not count delivered-but-unacknowledged entries: a crashed pod's batch keeps one pod
    assert int(held["pendingEntriesCount"]) >= 1
    assert held["consumerGroup"] == lag["consumerGroup"] == GROUP and held["stream"] == lag["stream"] == STREAM
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "activationLagCount" in readme and "XTRIM" in readme and "MINID" in readme
