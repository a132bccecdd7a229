"""Queue mode (scale-out) on Redis Streams: a producer publishes days of images, consumers in one
consumer group predict them, at least once.

Keys (STREAM defaults to `pipeline:images`):
- STREAM                      the work queue; one message per image (image_id, path, captured_date);
- STREAM:published:<day>      ids already published for that day (a re-run publishes nothing twice);
- STREAM:dead                 dead letters: poison messages (malformed, or delivered more than
                              --max-deliveries times without success); `redrive` puts them back;
- STREAM:errors               the last processing error per message id (copied into the dead letter).

Consumer loop: XAUTOCLAIM pending messages idle longer than --min-idle-ms (a dead consumer's), else
XREADGROUP new ones; decode, infer, upsert, then XACK. A crash before XACK leaves the messages
pending, so another consumer reclaims them; the upsert makes the retry harmless. SIGTERM finishes
the current batch, acks it and exits.

Infrastructure is never a message's fault. While the table is unavailable the consumer keeps its
batch, backs off (0.1 s doubling to --max-backoff, logged) and retries, re-claiming the batch with
JUSTID so that no other consumer takes it over (and counts a delivery). A lost Redis connection is
retried the same way and the batch in hand processed again, uncounted. Stopped during an outage, a
consumer hands its batch back with the delivery uncounted. Only what fails on its own content
counts: a malformed payload is dead-lettered at once, a row the table refuses stays pending and is
dead-lettered after --max-deliveries. A Redis outage is ridden out for up to --max-outage seconds
(every retry logged with the outage so far, then `redis_reconnected`); past that the consumer exits
1 with one line and its batch stays pending for another consumer.

Every --trim-interval seconds, busy or idle, and when it exits, the consumer trims the entries
every group has acknowledged (pipeline/retention.py); with --heartbeat it rewrites a heartbeat file
on every turn of its loop for the Kubernetes probes (pipeline/health.py). The producer side:
pipeline/publish.py.
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

from pipeline.health import Heartbeat
from pipeline.queue_defaults import FIELDS, GROUP, MAX_OUTAGE_S, MESSAGE_BATCH, STREAM, RedisOutage
from pipeline.retention import trim
from pipeline.sources import ID_CHARS, MAX_ID_BYTES, SourceImage
from pipeline.table import TableUnavailable

# A lost or refused connection, a server still loading its append-only file, a reply cut off by a
# restart (InvalidResponse), a replica that became read-only in a failover: all pass.
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.exceptions.InvalidResponse,
             redis.ReadOnlyError)


def log(**fields) -> None:
    print(json.dumps({"t": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **fields}),
          file=sys.stderr, flush=True)


def connect(url: str, block_ms: int = 1000) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3,
                                socket_timeout=block_ms / 1000 + 10)


def ensure_group(r: redis.Redis, stream: str, group: str) -> None:
    """Create the stream and group (reading from the start) unless they exist. An existing group
    is looked up first (XINFO reads, needs no memory), so a Redis at maxmemory, which refuses
    XGROUP CREATE, still lets consumers start and drain the stream."""
    try:
        if any(g["name"] == group for g in r.xinfo_groups(stream)):
            return
    except redis.ResponseError:  # no such stream yet
        pass
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


def payload_error(fields: dict) -> str | None:
    """Why a message cannot be an image to predict, or None: poison on its own content."""
    if not (fields.get("image_id") and fields.get("path")):
        return f"malformed message, fields {sorted(fields)}"
    if any("\x00" in str(v) for v in fields.values()):
        return "malformed message, a field holds a NUL byte (no file or table text can)"
    size = len(fields["image_id"].encode("utf-8", "surrogateescape"))
    if size > MAX_ID_BYTES:
        return (f"malformed message, an image id of {size} bytes, longer than the {MAX_ID_BYTES} a table index "
                f"holds (produce writes at most {ID_CHARS} characters)")
    if fields.get("captured_date"):
        try:
            dt.date.fromisoformat(fields["captured_date"])
        except ValueError:
            return f"malformed message, captured_date '{fields['captured_date']}' is not YYYY-MM-DD"
    return None


class Consumer:
    def __init__(self, predictor, table, url: str, stream: str = STREAM, group: str = GROUP,
                 name: str | None = None, batch_size: int = MESSAGE_BATCH, block_ms: int = 1000,
                 min_idle_ms: int = 60_000, max_deliveries: int = 3, max_idle_s: float | None = None,
                 exit_when_empty: bool = False, max_backoff_s: float = 5.0, max_outage_s: float = MAX_OUTAGE_S,
                 trim_interval_s: float = 60.0, heartbeat=None, streams: int | None = None):
        self.predictor, self.table, self.url = predictor, table, url
        self.stream, self.group = stream, group
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size, self.block_ms, self.min_idle_ms = batch_size, block_ms, min_idle_ms
        self.max_deliveries, self.max_idle_s, self.exit_when_empty = max_deliveries, max_idle_s, exit_when_empty
        self.max_backoff_s, self.max_outage_s, self.trim_interval_s = max_backoff_s, max_outage_s, trim_interval_s
        self.heartbeat = heartbeat or Heartbeat(None)
        self.streams = streams  # decode -> infer streams per message batch (None: pipeline.batch.default_streams)
        self.dead, self.errors = f"{stream}:dead", f"{stream}:errors"
        self.stopping = False
        self.r: redis.Redis | None = None
        self.held: list = []  # the batch in hand, kept across a lost Redis connection
        self.stats = {"ok": 0, "ood": 0, "error": 0, "batches": 0, "reclaimed": 0, "dead_lettered": 0,
                      "reconnects": 0, "table_retries": 0, "handed_back": 0, "trimmed": 0}

    def stop(self, *_):
        self.stopping = True

    def run(self) -> dict:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff, idle_since, outage_since, trimmed_at = 0.1, time.monotonic(), None, time.monotonic()
        log(event="consumer_start", consumer=self.name, stream=self.stream, group=self.group,
            model=self.predictor.name, version=self.predictor.version)
        while not self.stopping:
            try:
                if self.r is None:
                    self.r = connect(self.url, self.block_ms)
                    ensure_group(self.r, self.stream, self.group)
                msgs = self.held or self.claim() or self.read()
                if outage_since is not None:
                    log(event="redis_reconnected", consumer=self.name, outage_s=round(time.monotonic() - outage_since, 1))
                backoff, outage_since = 0.1, None
                self.heartbeat.beat("serving")
                if msgs:
                    self.held = msgs
                    self.process(msgs)
                    self.held = []
                    idle_since = time.monotonic()
                    self.heartbeat.beat("serving")
                if self.trim_interval_s > 0 and time.monotonic() - trimmed_at >= self.trim_interval_s:
                    # also when idle: the last batches' entries go too, so that the stream's length
                    # (a KEDA trigger, deploy/k8s/keda.yaml) falls to 0 once the work is done
                    self.stats["trimmed"] += trim(self.r, self.stream)["trimmed"]
                    trimmed_at = time.monotonic()
                if not msgs and self.exit_when_empty and self.drained():
                    break
                if not msgs and self.max_idle_s is not None and time.monotonic() - idle_since > self.max_idle_s:
                    break
            except RETRYABLE as e:
                if isinstance(e, redis.AuthenticationError):  # a ConnectionError in redis-py: never retried
                    raise
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.max_outage_s:
                    raise RedisOutage(f"Redis at --redis / REDIS_URL unreachable for {now - outage_since:.0f} s, "
                                      f"longer than --max-outage {self.max_outage_s:g} s ({str(e)[:200]}); the "
                                      f"batch in hand ({len(self.held)} messages) stays pending for another consumer")
                self.stats["reconnects"] += 1
                self.heartbeat.beat("redis_unavailable")
                log(event="redis_unavailable", consumer=self.name, error=str(e)[:200], retry_in_s=backoff,
                    outage_s=round(now - outage_since, 1), holding=len(self.held))
                self.r = None
                if not self.held and self.max_idle_s is not None and now - idle_since > self.max_idle_s:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self.r = None  # the stream or group vanished (e.g. Redis restarted without persistence)
        if self.trim_interval_s > 0 and self.r is not None:  # leaving: what it acknowledged goes too
            try:
                self.stats["trimmed"] += trim(self.r, self.stream)["trimmed"]
            except RETRYABLE:
                pass
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
        """Nothing pending and nothing undelivered. Redis reports the lag as NULL when it cannot
        tell (entries deleted after the group's position): then look for an entry after it."""
        info = next((g for g in self.r.xinfo_groups(self.stream) if g["name"] == self.group), None)
        if info is None or info["pending"]:
            return False
        if info.get("lag") is not None:
            return info["lag"] == 0
        return not self.r.xrange(self.stream, f"({info['last-delivered-id']}", "+", count=1)

    def deliveries(self, ids: list[str]) -> dict[str, int]:
        pend = self.r.xpending_range(self.stream, self.group, min=min(ids, key=_key),
                                     max=max(ids, key=_key), count=len(ids) + 1000, consumername=self.name)
        return {p["message_id"]: p["times_delivered"] for p in pend}

    def process(self, msgs: list) -> None:
        ids = [i for i, _ in msgs]
        counts = self.deliveries(ids)
        keep, dead = [], []
        for mid, fields in msgs:
            malformed = payload_error(fields)
            if malformed:
                dead.append((mid, fields, malformed))
            elif counts.get(mid, 1) > self.max_deliveries:
                dead.append((mid, fields, self.r.hget(self.errors, mid) or
                             f"delivered {counts[mid]} times without being acknowledged"))
            else:
                keep.append((mid, fields))
        for mid, fields, err in dead:
            self.r.xadd(self.dead, {**fields, "message_id": mid, "error": err,
                                    "deliveries": counts.get(mid, 1), "consumer": self.name})
            self.r.xack(self.stream, self.group, mid)
            self.r.hdel(self.errors, mid)
            self.stats["dead_lettered"] += 1
            log(event="dead_letter", consumer=self.name, message_id=mid, error=err)
        if keep:
            from pipeline.batch import predicted  # here: the producer never loads the model runtime
            items = [SourceImage.from_fields(f) for _, f in keep]
            # batch mode's decode -> infer path; with streams, the message batch is shared out over them
            rows = [r for _, part in predicted(self.predictor, items, len(items), workers=0, streams=self.streams)
                    for r in part]
            self.settle([mid for mid, _ in keep], rows, counts)

    def settle(self, ids: list[str], rows: list[dict], counts: dict[str, int]) -> None:
        """Upsert the batch's rows and ack them. While the table is unavailable, keep the batch:
        back off, retry, and re-claim it (JUSTID: no delivery counted) so nobody else takes it."""
        backoff = 0.1
        while True:
            try:
                refused = self.write(ids, rows)
                break
            except TableUnavailable as e:
                if self.stopping:
                    return self.hand_back(ids, counts)
                self.stats["table_retries"] += 1
                self.heartbeat.beat("table_unavailable")
                pause = min(backoff, self.min_idle_ms / 2000)  # re-claimed before anyone may take it
                log(event="table_unavailable", consumer=self.name, holding=len(ids), error=str(e)[:200],
                    retry_in_s=pause)
                time.sleep(pause)
                backoff = min(backoff * 2, self.max_backoff_s)
                self.r.xclaim(self.stream, self.group, self.name, 0, ids, justid=True)
        done = [mid for mid in ids if mid not in refused]
        if refused:  # left pending: retried after min_idle_ms, dead-lettered after max_deliveries
            self.r.hset(self.errors, mapping=refused)
            log(event="rows_refused", consumer=self.name, n=len(refused), error=next(iter(refused.values())))
        if done:
            self.r.xack(self.stream, self.group, *done)
            self.r.hdel(self.errors, *done)
        self.stats["batches"] += 1
        for mid, row in zip(ids, rows):
            if mid not in refused:
                self.stats[row["status"]] += 1

    def write(self, ids: list[str], rows: list[dict]) -> dict[str, str]:
        """Upsert `rows`; {message id: error} of those the table refuses for their content
        (`PredictionTable.upsert_split`), so that one bad row does not hold back its batch."""
        return {ids[i]: error for i, error in self.table.upsert_split(rows).items()}

    def hand_back(self, ids: list[str], counts: dict[str, int]) -> None:
        """Stopped while the table is down: leave the batch pending for the next consumer, idle
        enough to be reclaimed at once and with this delivery taken off its count."""
        for mid in ids:
            self.r.xclaim(self.stream, self.group, self.name, 0, [mid], idle=self.min_idle_ms,
                          retrycount=max(counts.get(mid, 1) - 1, 0), justid=True)
        self.stats["handed_back"] += len(ids)
        log(event="handed_back", consumer=self.name, n=len(ids), reason="stopped while the table is unavailable")


def _key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)
