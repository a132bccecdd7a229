"""The stream stays bounded: acknowledged entries are trimmed, and nothing else.

`trim` removes (XTRIM MINID, exact) every entry older than the oldest one that some consumer
group still needs: for each group of the stream, its oldest pending entry (delivered, not yet
acknowledged: a dead consumer's batch waiting to be reclaimed), or, with nothing pending, the
first entry after its last-delivered id. Everything below that bound has been delivered to and
acknowledged by every group, so a trim never removes work; a stream without groups is never
trimmed. Consumers trim every --trim-interval seconds, busy or idle, and when they exit;
`python -m pipeline trim` does it once (a CronJob or by hand).

Why not MAXLEN or XDEL: they may remove entries that are still pending or not yet delivered (lost
work), and a deleted entry after a group's last-delivered id makes Redis report that group's lag
as NULL or wrong (redis/redis#13957, valkey-io/valkey#1951), which KEDA's lag trigger reads. A
trim below every group's delivered frontier keeps the lag exact (tests/test_pipeline_retention.py).

The bound is computed from XINFO GROUPS and XPENDING, then applied: in between, groups can only
move forward (deliver or acknowledge more), which makes the bound conservative, never unsafe. A
consumer group created later sees only what is still in the stream (create it before publishing,
or publish again with `produce`).
"""
from __future__ import annotations

import redis


def _next(message_id: str) -> str:
    ms, _, seq = message_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _older(a: str, b: str) -> str:
    key = lambda m: tuple(int(x) for x in m.split("-"))  # noqa: E731
    return min(a, b, key=key)


def trim_bound(r: redis.Redis, stream: str) -> str | None:
    """The oldest entry id some group of `stream` still needs, or None (no groups: keep all)."""
    bound = None
    for g in r.xinfo_groups(stream):
        need = _next(g["last-delivered-id"])
        if g["pending"]:
            oldest = r.xpending(stream, g["name"])["min"]  # None if acknowledged meanwhile
            need = _older(oldest, need) if oldest else need
        bound = need if bound is None else _older(bound, need)
    return bound


def trim(r: redis.Redis, stream: str) -> dict:
    """Remove the acknowledged entries of `stream` (see the module's docstring)."""
    try:
        bound = trim_bound(r, stream)
    except redis.ResponseError as e:
        if "no such key" not in str(e).lower():
            raise
        bound = None  # no stream yet
    removed = r.xtrim(stream, minid=bound, approximate=False) if bound else 0
    return {"trimmed": removed, "kept_from": bound, "length": r.xlen(stream), "stream": stream}
