"""The queue's names and defaults, importable without the Redis client: every `python -m pipeline`
command builds its flags from them, and batch mode (`predict`, `query`, `threshold`) runs where no
Redis client is installed. The queue itself: pipeline/streams.py (consumers), pipeline/publish.py
(producer, redrive)."""
from __future__ import annotations

STREAM, GROUP = "pipeline:images", "pipeline-consumers"
FIELDS = ("image_id", "path", "captured_date")  # a message's payload
# Messages per XREADGROUP (--batch-size), shared out over the decode -> infer streams, as in batch
# mode. Measured (pipeline/README.md "Performance", 2 cores, 2 streams): 32 left each stream a
# 16-image forward, 0.76x the bare forward at 64 px against 0.82x for 64; at 224 px 64 costs 9-13
# points against 32 (0.89-0.98x).
MESSAGE_BATCH = 64
MAX_OUTAGE_S = 3600.0  # a consumer rides out a Redis outage this long (--max-outage), then exits 1


class RedisOutage(RuntimeError):
    """Redis stayed unreachable for longer than --max-outage."""
