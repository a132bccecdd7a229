"""Queue mode's producer side: publish days of images onto the stream (each image once), and
`redrive` dead letters back onto it. Keys and consumers: pipeline/streams.py."""
from __future__ import annotations

import os

from pipeline.sources import parse_date, scan_source, warn_skipped
from pipeline.queue_defaults import FIELDS, GROUP, PUBLISHED_TTL_DAYS, STREAM
from pipeline.streams import connect, ensure_group, log, payload_error

# Atomic per chunk: publish an id only if this call added it to the day's published set, or if it
# is a retry (its row says the file was not there or could not be opened: ARGV[i + 3] == '1').
PUBLISH = """
local n = 0
for i = 2, #ARGV, 4 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 or ARGV[i + 3] == '1' then
    redis.call('XADD', KEYS[1], '*', 'image_id', ARGV[i], 'path', ARGV[i + 1], 'captured_date', ARGV[i + 2])
    n = n + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return n
"""



def produce(url: str, source, days, stream: str = STREAM, group: str = GROUP, table=None,
            ttl_days: int = PUBLISHED_TTL_DAYS, tz: str | None = None) -> dict:
    """Publish the images captured on `days` (one YYYY-MM-DD or a list) that are not yet published
    (each day's set) and have no final row in `table`. A listed file that is not there yet is left
    for a later run; one whose row says it was not found or could not be opened is published again."""
    days = [parse_date(d, "--date") for d in ([days] if isinstance(days, str) else days)]
    items, skipped = scan_source(source, days, tz)
    warn_skipped(skipped)
    ready = [i for i in items if os.path.lexists(i.path)]
    states = table.states([i.image_id for i in ready]) if table is not None else {}
    todo = [(i, i.image_id in states) for i in ready if not states.get(i.image_id)]
    r = connect(url)
    ensure_group(r, stream, group)
    script = r.register_script(PUBLISH)
    published = 0
    for day in days:
        batch = [(i, retry) for i, retry in todo if i.captured_date == day]
        for k in range(0, len(batch), 500):
            args = [ttl_days * 86400]
            for it, retry in batch[k:k + 500]:
                args += [it.image_id, it.path, it.captured_date or "", "1" if retry else "0"]
            published += script(keys=[stream, f"{stream}:published:{day}"], args=args)
    retried = sum(retry for _, retry in todo)
    span = {"day": days[0]} if len(days) == 1 else {"from": days[0], "to": days[-1], "days": len(days)}
    out = {**span, "listed": len(items), "not_ready": len(items) - len(ready), "in_table": len(states) - retried,
           "retried": retried, "published": published, "already_queued": len(todo) - published,
           "skipped": len(skipped), "stream": stream}
    waiting = set(items) - set(ready)
    log(event="produced", **out, waiting_for=sorted(i.image_id for i in waiting)[:20])
    return out


def redrive(url: str, stream: str = STREAM, group: str = GROUP, count: int | None = None) -> dict:
    """Move dead letters (the first `count`, or all) back onto the stream as new messages, each
    XADD + XDEL in one transaction; a malformed one would only die again, so it stays."""
    r = connect(url)
    ensure_group(r, stream, group)
    dead = f"{stream}:dead"
    moved, kept = [], []
    for mid, fields in r.xrange(dead, count=count):
        if payload_error(fields):
            kept.append(mid)
            continue
        tx = r.pipeline(transaction=True)
        tx.xadd(stream, {k: fields.get(k, "") for k in FIELDS})
        tx.xdel(dead, mid)
        tx.execute()
        moved.append(fields["image_id"])
    out = {"redriven": len(moved), "kept_malformed": len(kept), "dead_left": r.xlen(dead), "stream": stream,
           "image_ids": moved}
    log(event="redriven", **{k: v for k, v in out.items() if k != "image_ids"})
    return out
