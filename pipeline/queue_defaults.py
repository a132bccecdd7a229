"""The queue's names and defaults, importable without the Redis client: every `python -m pipeline`
command builds its flags from them, and batch mode (`predict`, `query`, `threshold`) runs where no
Redis client is installed. The queue itself: pipeline/streams.py (consumers), pipeline/publish.py
(producer, redrive)."""
from __future__ import annotations

STREAM, GROUP = "pipeline:images", "pipeline-consumers"
FIELDS = ("image_id", "path", "captured_date")  # a message's payload
# Messages per XREADGROUP (--batch-size), shared out over the decode -> infer streams, as in batch
# mode. Each stream gets its share as one forward, and a 1-thread forward of the CPU-served quick
# model needs about 32 images to reach its speed, so 64 feeds two streams; a large-input model
# (224 px) does slightly better with 32 (`--batch-size 32`). Measured: pipeline/README.md "Performance".
MESSAGE_BATCH = 64
PUBLISHED_TTL_DAYS = 30  # how long a day's published set is kept: the longest produce --look-back
MAX_OUTAGE_S = 3600.0  # a consumer rides out a Redis outage this long (--max-outage), then exits 1


class RedisOutage(RuntimeError):
    """Redis stayed unreachable for longer than --max-outage."""
