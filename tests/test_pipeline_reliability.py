"""Prediction data that must not be lost, each against real servers on loopback ports:
a table outage under a running consumer dead-letters nothing, dead letters can be re-driven, two
sources with the same file names give two rows, a file that was not there yet is predicted by a
later produce run, produce publishes past days and ranges, the nightly producer publishes whole
days in its time zone, and Redis is deployed with an append-only file."""
from __future__ import annotations

import calendar
import datetime as dt
import json
import signal
import time

import pytest
import yaml

from tests.builders import write_images
from tests.conftest import ROOT
from tests.test_pipeline_support import (PostgresServer, RedisServer, finish, pipeline_cli, start_consumer,
                                         wait_for)

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")

DAY = "2026-11-20"
NOON = calendar.timegm((2026, 11, 20, 12, 0, 0))
STREAM, GROUP, DEAD = "pipeline:images", "pipeline-consumers", "pipeline:images:dead"


@pytest.fixture()
def server(tmp_path):
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


def count_rows(url: str) -> int:
    from pipeline.table import PredictionTable, TableUnavailable
    try:
        t = PredictionTable(url)
    except TableUnavailable:
        return -1
    n = len(t.query())
    t.close()
    return n


@pytest.fixture(scope="module")
def predictor(bundles):
    from pipeline.model import Predictor
    pred = Predictor.load(bundles["uni"])
    return pred


def consume_all(pred, db, url):
    """Run one consumer in-process until nothing is queued or pending; its stats."""
    from pipeline.streams import Consumer
    from pipeline.table import PredictionTable
    table = PredictionTable(str(db))
    try:
        return Consumer(pred, table, url, batch_size=8, block_ms=100, min_idle_ms=0, exit_when_empty=True,
                        max_idle_s=30).run()
    finally:
        table.close()


@pytest.mark.parametrize("fault", ["down", "read-only"])
def test_table_outage_under_a_consumer_dead_letters_nothing(bundles, server, tmp_path, fault):
    """PostgreSQL down, or read-only (a failover's standby: SQLSTATE 25006), under a consumer: it
    backs off and retries, dead-letters nothing, and lands every row once the table is back."""
    from pipeline.publish import produce
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")
    pg = PostgresServer().start()
    try:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        write_images(tmp_path / "src" / "first", 8, mtime=NOON)
        produce(server.url, tmp_path / "src", DAY)
        # Short --min-idle-ms: without the fix the failing batch is redelivered about once a second,
        # so --max-deliveries 3 sends it to the dead letters well within the outage.
        proc = start_consumer(bundles["uni"], pg.url, server.url, "c0", tmp_path, "--batch-size", "4",
                              "--min-idle-ms", "1000", "--max-deliveries", "3", "--max-backoff", "1",
                              until_empty=False)
        wait_for(lambda: count_rows(pg.url) == 8, 60, "the first 8 rows")
        pg.down() if fault == "down" else pg.read_only(True)
        write_images(tmp_path / "src" / "second", 16, seed=7, mtime=NOON)
        assert produce(server.url, tmp_path / "src", DAY)["published"] == 16
        log = tmp_path / "c0.log"
        wait_for(lambda: "table_unavailable" in log.read_text() or "batch_failed" in log.read_text(), 30,
                 "the consumer meeting the outage")
        outage_end = time.monotonic() + 5
        wait_for(lambda: r.xlen(DEAD) or time.monotonic() > outage_end, 10, "the outage")
        pg.up() if fault == "down" else pg.read_only(False)
        wait_for(lambda: r.xlen(DEAD) or count_rows(pg.url) == 24, 60, "every row after the outage")
        proc.send_signal(signal.SIGTERM)
        stats = finish([proc], timeout=60)[0]
        assert r.xlen(DEAD) == 0, [f["error"] for _, f in r.xrange(DEAD)]
        from pipeline.table import PredictionTable
        t = PredictionTable(pg.url)
        ids = [row["image_id"] for row in t.query()]
        t.close()
        assert len(ids) == len(set(ids)) == 24, "every image exactly one row"
        assert r.xinfo_groups(STREAM)[0]["pending"] == 0
        assert stats["table_retries"] >= 1 and stats["dead_lettered"] == 0
        assert '"retry_in_s"' in log.read_text()  # the backoff is logged
    finally:
        pg.stop()


def test_redrive_puts_dead_letters_back_on_the_stream(predictor, server, tmp_path):
    from pipeline.publish import redrive
    from pipeline.streams import ensure_group
    paths = write_images(tmp_path / "src", 2, mtime=NOON)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    ensure_group(r, STREAM, GROUP)
    for i, p in enumerate(paths):  # dead letters as a consumer writes them
        r.xadd(DEAD, {"image_id": f"car-{i}", "path": str(p), "captured_date": DAY, "message_id": f"1-{i}",
                      "error": "OperationalError: connection failed", "deliveries": 4, "consumer": "c0"})
    r.xadd(DEAD, {"oops": "no image id", "message_id": "1-9", "error": "malformed message", "deliveries": 1,
                  "consumer": "c0"})
    out = json.loads(pipeline_cli("redrive", "--redis", server.url).stdout)
    assert out["redriven"] == 2 and out["kept_malformed"] == 1 and out["dead_left"] == 1
    assert out["image_ids"] == ["car-0", "car-1"]
    assert [f for _, f in r.xrange(STREAM)] == [{"image_id": f"car-{i}", "path": str(p), "captured_date": DAY}
                                                for i, p in enumerate(paths)]
    stats = consume_all(predictor, tmp_path / "p.db", server.url)
    assert stats["ok"] + stats["ood"] == 2 and stats["dead_lettered"] == 0
    assert redrive(server.url)["redriven"] == 0


def test_two_sources_with_the_same_file_names_give_two_rows(predictor, server, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.sources import list_source
    from pipeline.publish import produce
    from pipeline.table import PredictionTable
    day1 = write_images(tmp_path / "uploads" / "day1", 3, seed=1, mtime=NOON)
    day2 = write_images(tmp_path / "uploads" / "day2", 3, seed=2, mtime=NOON)
    assert [p.relative_to(p.parents[1]) for p in day1] == [p.relative_to(p.parents[1]) for p in day2]
    db = tmp_path / "p.db"
    table = PredictionTable(str(db))
    run_batch(predictor, table, list_source(tmp_path / "uploads" / "day1"), 8, 0, False)
    # The next day's photos, same names: the producer publishes them despite the table's rows.
    out = produce(server.url, tmp_path / "uploads" / "day2", DAY, table=table)
    assert out["published"] == 3 and out["in_table"] == 0
    consume_all(predictor, db, server.url)
    assert len(table.query()) == 6
    # Stable: the same files listed again, or the same tree under another folder, keep their ids.
    import shutil
    shutil.copytree(tmp_path / "uploads" / "day1", tmp_path / "mirror")
    ids = [i.image_id for i in list_source(tmp_path / "uploads" / "day1")]
    assert ids == [i.image_id for i in list_source(tmp_path / "mirror")]
    assert table.final_ids(ids) == set(ids)


def test_a_file_not_there_yet_is_predicted_by_a_later_produce_run(predictor, server, tmp_path):
    from pipeline.publish import produce
    from pipeline.table import PredictionTable
    src = tmp_path / "img"
    good = write_images(src, 4, mtime=NOON)
    absent = src / "late.jpg"
    (src / "corrupt.jpg").write_bytes(b"this is not a picture")
    manifest = tmp_path / "manifest.csv"
    names = {"car-0": good[0], "car-1": absent, "car-2": src / "corrupt.jpg", "car-3": good[1]}
    manifest.write_text("path,captured_date,image_id\n" + "".join(
        f"{p.relative_to(tmp_path).as_posix()},{DAY},{k}\n" for k, p in names.items()))
    db = tmp_path / "p.db"
    table = PredictionTable(str(db))
    first = produce(server.url, manifest, DAY, table=table)
    assert first["not_ready"] == 1 and first["published"] == 3  # car-1 waits for its file
    moved = good[1].rename(tmp_path / "away.jpg")  # car-3 vanishes between produce and consume
    consume_all(predictor, db, server.url)
    rows = {r["image_id"]: r for r in table.query()}
    assert "file not found" in rows["car-3"]["error"] and rows["car-2"]["status"] == "error"
    good[2].rename(absent)  # the late file arrives, the vanished one comes back
    moved.rename(good[1])
    second = produce(server.url, manifest, DAY, table=table)
    assert second["published"] == 2 and second["retried"] == 1 and second["not_ready"] == 0
    consume_all(predictor, db, server.url)
    rows = {r["image_id"]: r for r in table.query()}
    assert {k: rows[k]["status"] in ("ok", "ood") for k in names} == \
        {"car-0": True, "car-1": True, "car-2": False, "car-3": True}
    assert produce(server.url, manifest, DAY, table=table)["published"] == 0  # a decode error is final: never published again


def test_produce_a_past_day_a_range_and_days_in_a_time_zone(server, tmp_path):
    from pipeline.cli import days, parser
    from pipeline.sources import SourceError, list_source, resolve_day
    from pipeline.publish import produce
    for k in range(3):  # 2026-11-20, 21, 22 at noon UTC
        write_images(tmp_path / "src" / f"d{k}", 2 + k, seed=k, mtime=NOON + k * 86400)
    src = tmp_path / "src"
    ranged = json.loads(pipeline_cli("produce", "--source", src, "--redis", server.url, "--from", "2026-11-20",
                                     "--to", "2026-11-21").stdout)
    assert ranged["published"] == 2 + 3 and (ranged["from"], ranged["to"], ranged["days"]) == \
        ("2026-11-20", "2026-11-21", 2)
    assert produce(server.url, src, "2026-11-22")["published"] == 4
    assert produce(server.url, src, ["2026-11-20", "2026-11-21", "2026-11-22"])["published"] == 0
    flags = ["produce", "--source", "x", "--tz", "Asia/Seoul"]
    assert days(parser().parse_args([*flags, "--from", "2026-11-30", "--to", "2026-12-01"])) == \
        ["2026-11-30", "2026-12-01"]
    assert days(parser().parse_args([*flags, "--date", "2026-11-20", "--look-back", "1"])) == ["2026-11-20"]
    assert days(parser().parse_args([*flags, "--date", "2026-11-20"]))[::6] == ["2026-11-14", "2026-11-20"]
    # 23:45 and 00:10 in Seoul are one UTC day apart from what their UTC dates say.
    late = calendar.timegm((2026, 11, 20, 14, 45, 0))  # 2026-11-20 23:45 KST
    early = calendar.timegm((2026, 11, 20, 15, 10, 0))  # 2026-11-21 00:10 KST, 2026-11-20 in UTC
    write_images(tmp_path / "seoul" / "late", 1, mtime=late)
    write_images(tmp_path / "seoul" / "early", 1, seed=5, mtime=early)
    listed = {i.image_id.split("/")[0] for i in list_source(tmp_path / "seoul", "2026-11-20", "Asia/Seoul")}
    assert listed == {"late"}
    at = dt.datetime(2026, 11, 20, 15, 30, tzinfo=dt.timezone.utc)  # 00:30 in Seoul
    assert resolve_day("yesterday", "Asia/Seoul", now=at) == "2026-11-20"
    assert resolve_day("today", "UTC", now=at) == "2026-11-20"
    with pytest.raises(SourceError, match="unknown time zone"):  # the CLI prints it as `error: ...`
        days(parser().parse_args(["produce", "--source", "x", "--tz", "Mars/Olympus"]))


def manifests() -> dict:
    docs = {}
    for f in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for d in yaml.safe_load_all(f.read_text()):
            docs[(d["kind"], d["metadata"]["name"])] = d
    return docs


def test_the_nightly_producer_publishes_whole_days_of_its_time_zone():
    from pipeline.sources import resolve_day, zone
    docs = manifests()
    cron = docs[("CronJob", "pipeline-producer")]["spec"]
    tz = docs[("ConfigMap", "pipeline-config")]["data"]["PIPELINE_TZ"]
    assert cron["timeZone"] == tz and zone(tz)
    minute, hour = (int(x) for x in cron["schedule"].split()[:2])
    args = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["produce", "--date", "yesterday", "--look-back", "7"]
    # Fired at its time in its zone, it publishes the whole day that has just ended.
    fired = dt.datetime(2026, 11, 21, hour, minute, tzinfo=zone(tz))
    assert fired.date() == dt.date(2026, 11, 21)
    assert resolve_day(args[args.index("--date") + 1], tz, now=fired) == "2026-11-20"


def test_redis_is_deployed_with_an_append_only_file():
    docs = manifests()
    config = docs[("ConfigMap", "pipeline-config")]["data"]
    host = config["REDIS_URL"].split("//")[1].split(".")[0]
    assert docs[("Service", host)]["spec"]["selector"] == {"app": "redis"}
    redis_set = docs[("StatefulSet", host)]["spec"]
    args = " ".join(redis_set["template"]["spec"]["containers"][0]["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args and "noeviction" in args
    assert redis_set["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
