"""The consumer's health for Kubernetes probes: a heartbeat file, and the probe that reads it,

    python -m pipeline.health --heartbeat /tmp/heartbeat --max-age 120 [--ready]

which exits 0 (printing `ok`) or 1 with one `error:` line; it imports neither torch nor Redis, so
a probe every few seconds costs little.

The consumer (`consume --heartbeat PATH`, env PIPELINE_HEARTBEAT) rewrites the file on every
turn of its loop: after each poll of Redis (at most --block-ms), each batch, and each retry while
Redis or the table is unreachable (at most --max-backoff apart). It holds one JSON object,
`{"t": unix time, "state": ..., "consumer": name, "pid": ...}`, written atomically (temporary
file, rename), with state `starting` (loading the model), `serving` (the last turn reached
Redis and the table), `redis_unavailable` or `table_unavailable` (retrying with backoff).

- live: the file was written less than --max-age seconds ago. A consumer riding out an outage is
  live (restarting it would not help); one stuck in a call that never returns is not.
- ready (`--ready`): live and `serving`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

STATES = ("starting", "serving", "redis_unavailable", "table_unavailable")


class HeartbeatError(OSError):
    """The heartbeat file cannot be written; the message names it."""


class Heartbeat:
    """Writes the heartbeat file (nothing when `path` is None)."""

    def __init__(self, path: str | Path | None, consumer: str = ""):
        self.path, self.consumer, self.warned = (Path(path) if path else None), consumer, False

    def beat(self, state: str, strict: bool = False) -> None:
        """Rewrite the file. A failure is HeartbeatError with `strict` (at start: a wrong path);
        later it is named once on stderr, and the stale file fails the probe that reads it."""
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"t": time.time(), "state": state, "consumer": self.consumer,
                                       "pid": os.getpid()}))
            os.replace(tmp, self.path)
        except OSError as e:
            message = (f"{self.path}: cannot write the heartbeat ({e.strerror or e}); give --heartbeat "
                       f"(PIPELINE_HEARTBEAT) a writable path, e.g. on an emptyDir volume")
            if strict:
                raise HeartbeatError(message) from None
            if not self.warned:
                self.warned = True
                print(f"warning: {message}", file=sys.stderr, flush=True)


def check(path: str | Path, max_age: float, ready: bool = False) -> str | None:
    """Why the consumer whose heartbeat is `path` is not live (or not ready), or None."""
    try:
        beat = json.loads(Path(path).read_text())
        age, state = time.time() - float(beat["t"]), beat["state"]
    except FileNotFoundError:
        return f"{path}: no heartbeat yet (the consumer has not started its loop)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{path}: unreadable heartbeat ({type(e).__name__}: {e})"
    if age > max_age:
        return f"{path}: last heartbeat {age:.0f} s ago (more than --max-age {max_age:g} s); the consumer is stuck"
    if ready and state != "serving":
        return f"{path}: not ready, {state} ({age:.0f} s ago)"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.health", description="exit 0 if a consumer's "
                                 "heartbeat is fresh (and, with --ready, its last turn reached Redis and the table)")
    ap.add_argument("--heartbeat", default=os.environ.get("PIPELINE_HEARTBEAT"), required=not
                    os.environ.get("PIPELINE_HEARTBEAT"), help="the consumer's heartbeat file (env PIPELINE_HEARTBEAT)")
    ap.add_argument("--max-age", type=float, default=120.0, help="oldest heartbeat (s) of a live consumer")
    ap.add_argument("--ready", action="store_true", help="also require state serving")
    args = ap.parse_args(argv)
    problem = check(args.heartbeat, args.max_age, args.ready)
    if problem:
        sys.exit(f"error: {problem}")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
