"""Queue mode (scale-out) on Redis Streams: a producer publishes a day's images, consumers in one
consumer group predict them, at least once.

Keys (STREAM defaults to `pipeline:images`):
- STREAM                      the work queue; one message per image (image_id, path, captured_date);
- STREAM:published:<day>      ids already published for that day (a re-run publishes nothing twice);
- STREAM:dead                 dead letters: messages delivered more than --max-deliveries times;
- STREAM:errors               the last processing error per message id (copied into the dead letter).

Consumer loop: XAUTOCLAIM pending messages idle longer than --min-idle-ms (a dead consumer's), else
XREADGROUP new ones; decode, infer, upsert, then XACK. A crash before XACK leaves the messages
pending, so another consumer reclaims them; the upsert makes the retry harmless. SIGTERM finishes
the current batch, acks it and exits. Lost connections are retried with exponential backoff.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import sys
import time

import redis

from pipeline.batch import decode_items, infer
from pipeline.sources import SourceImage, list_source, parse_date

STREAM, GROUP = "pipeline:images", "pipeline-consumers"
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
# Atomic per chunk: publish an id only if this call added it to the day's published set.
PUBLISH = """
local n = 0
for i = 2, #ARGV, 3 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'image_id', ARGV[i], 'path', ARGV[i + 1], 'captured_date', ARGV[i + 2])
    n = n + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""


def log(**fields) -> None:
    print(json.dumps({"t": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **fields}),
          file=sys.stderr, flush=True)


def connect(url: str, block_ms: int = 1000) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3,
                                socket_timeout=block_ms / 1000 + 10)


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the stream and group (reading from the start) unless they exist."""
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def produce(url: str, source, day: str, stream: str = STREAM, group: str = GROUP, table=None,
            ttl_days: int = 30) -> dict:
    """Publish `day`'s images not yet published (the day's set) and not yet in `table`."""
    day = parse_date(day, "--date")
    items = list_source(source, day)
    done = table.existing_ids([i.image_id for i in items]) if table is not None else set()
    todo = [i for i in items if i.image_id not in done]
    r = connect(url)
    ensure_group(r, stream, group)
    script = r.register_script(PUBLISH)
    key = f"{stream}:published:{day}"
    published = 0
    for k in range(0, len(todo), 500):
        args = [ttl_days * 86400]
        for it in todo[k:k + 500]:
            args += [it.image_id, it.path, it.captured_date or ""]
        published += script(keys=[stream, key], args=args)
    out = {"day": day, "listed": len(items), "in_table": len(done), "published": published,
           "already_queued": len(todo) - published, "stream": stream}
    log(event="produced", **out)
    return out


class Consumer:
    def __init__(self, predictor, table, url: str, stream: str = STREAM, group: str = GROUP,
                 name: str | None = None, batch_size: int = 32, block_ms: int = 1000,
                 min_idle_ms: int = 60_000, max_deliveries: int = 3, max_idle_s: float | None = None,
                 exit_when_empty: bool = False, max_backoff_s: float = 5.0):
        self.predictor, self.table, self.url = predictor, table, url
        self.stream, self.group = stream, group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size, self.block_ms, self.min_idle_ms = batch_size, block_ms, min_idle_ms
        self.max_deliveries, self.max_idle_s, self.exit_when_empty = max_deliveries, max_idle_s, exit_when_empty
        self.max_backoff_s = max_backoff_s
        self.dead, self.errors = f"{stream}:dead", f"{stream}:errors"
        self.transform = predictor.transform()
        self.stopping = False
        self.r: redis.Redis | None = None
        self.stats = {"ok": 0, "ood": 0, "error": 0, "batches": 0, "reclaimed": 0, "dead_lettered": 0,
                      "reconnects": 0}

    def stop(self, *_):
        self.stopping = True

    def run(self) -> dict:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff, idle_since = 0.1, time.monotonic()
        log(event="consumer_start", consumer=self.name, stream=self.stream, group=self.group,
            model=self.predictor.name, version=self.predictor.version)
        while not self.stopping:
            try:
                if self.r is None:
                    self.r = connect(self.url, self.block_ms)
                    ensure_group(self.r, self.stream, self.group)
                msgs = self.claim() or self.read()
                backoff = 0.1
                if msgs:
                    self.process(msgs)
                    idle_since = time.monotonic()
                elif self.exit_when_empty and self.drained():
                    break
                elif self.max_idle_s is not None and time.monotonic() - idle_since > self.max_idle_s:
                    break
            except RETRYABLE as e:
                self.stats["reconnects"] += 1
                log(event="redis_unavailable", consumer=self.name, error=str(e)[:200], retry_in_s=backoff)
                self.r = None
                if self.max_idle_s is not None and time.monotonic() - idle_since > self.max_idle_s:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self.r = None  # the stream or group vanished (e.g. Redis restarted without persistence)
        log(event="consumer_exit", consumer=self.name, **self.stats)
        return self.stats

    def claim(self) -> list:
        """Take over messages another (dead) consumer left pending for longer than min_idle_ms."""
        reply = self.r.xautoclaim(self.stream, self.group, self.name, self.min_idle_ms, "0-0",
                                  count=self.batch_size)  # [cursor, messages(, deleted ids on Redis 7)]
        msgs = [(i, f) for i, f in reply[1] if f]
        if msgs:
            self.stats["reclaimed"] += len(msgs)
            log(event="reclaimed", consumer=self.name, n=len(msgs))
        return msgs

    def read(self) -> list:
        got = self.r.xreadgroup(self.group, self.name, {self.stream: ">"}, count=self.batch_size,
                                block=self.block_ms)
        return got[0][1] if got else []

    def drained(self) -> bool:
        info = next((g for g in self.r.xinfo_groups(self.stream) if g["name"] == self.group), None)
        return info is not None and info["pending"] == 0 and not info.get("lag")

    def deliveries(self, ids: list[str]) -> dict[str, int]:
        pend = self.r.xpending_range(self.stream, self.group, min=min(ids, key=_key),
                                     max=max(ids, key=_key), count=len(ids) + 1000, consumername=self.name)
        return {p["message_id"]: p["times_delivered"] for p in pend}

    def process(self, msgs: list) -> None:
        ids = [i for i, _ in msgs]
        counts = self.deliveries(ids)
        keep, dead = [], []
        for mid, fields in msgs:
            if counts.get(mid, 1) > self.max_deliveries:
                dead.append((mid, fields, self.r.hget(self.errors, mid) or
                             f"delivered {counts[mid]} times without being acknowledged"))
            elif not {"image_id", "path"} <= set(fields):
                dead.append((mid, fields, f"malformed message, fields {sorted(fields)}"))
            else:
                keep.append((mid, fields))
        for mid, fields, err in dead:
            self.r.xadd(self.dead, {**fields, "message_id": mid, "error": err,
                                    "deliveries": counts.get(mid, 1), "consumer": self.name})
            self.r.xack(self.stream, self.group, mid)
            self.r.hdel(self.errors, mid)
            self.stats["dead_lettered"] += 1
            log(event="dead_letter", consumer=self.name, message_id=mid, error=err)
        if not keep:
            return
        items = [SourceImage.from_fields(f) for _, f in keep]
        try:
            rows = infer(self.predictor, items, *decode_items(items, self.transform))
            self.table.upsert(rows)
        except RETRYABLE:
            raise
        except Exception as e:  # left pending: retried after min_idle_ms, dead-lettered after N tries
            msg = f"{type(e).__name__}: {e}"[:1000]
            self.r.hset(self.errors, mapping={mid: msg for mid, _ in keep})
            log(event="batch_failed", consumer=self.name, n=len(keep), error=msg)
            time.sleep(1.0)  # e.g. the database is down: do not burn through the queue
            return
        done = [mid for mid, _ in keep]
        self.r.xack(self.stream, self.group, *done)
        self.r.hdel(self.errors, *done)
        self.stats["batches"] += 1
        for row in rows:
            self.stats[row["status"]] += 1


def _key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)
