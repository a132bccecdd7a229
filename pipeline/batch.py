"""Batch mode (one machine, no broker): source -> decode (in-process threads, or decode
processes) -> OOD filter + classifier -> top-2 -> upsert into the prediction table (one
transaction per batch), with a progress bar and a summary.

A file that cannot be decoded becomes an `error` row carrying the decoder's message; nothing a
single file contains stops the run.

How decoding shares the machine with the model: by default (`workers=None`) up to 8 cores images
are decoded in-process by `default_streams()` streams, two per core (`in_streams`): each thread
decodes a whole batch and runs the forward on it at one inference thread (`default_threads()`;
the CLI's --streams and --threads), so every core works decode -> forward -> decode with no
thread-pool barrier that a decoder can stall, no worker processes to start, feed and pickle back,
and a core's second stream runs its forward while the first holds the GIL. Batches are evened out
so that no stream idles at the end (`stream_batch`). The other in-process layout, one stream
(`--streams 1`), gives the forward every core while `decode_threads()` background threads decode
the next batches (`prefetched`). Queue consumers use the same path (`predicted`), one message
batch at a time, shared out over the streams. With more than 8 cores decode processes
(`default_workers()`) decode beside one stream that gets the cores they leave.
bench/bench_pipeline.py measures every layout (pipeline/README.md "Performance").
"""
from __future__ import annotations

import itertools
import math
import multiprocessing
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from data.images import ImageError, printable
from pipeline.model import Predictor
from pipeline.pixels import Pixels
from pipeline.sources import SourceImage
from pipeline.table import PredictionTable
from provenance import cores, default_workers

DECODE_AHEAD = 3  # measured: pipeline/README.md "Performance"
STREAMS_PER_CORE = 2  # measured: pipeline/README.md "Results"
MAX_STREAMS = 8  # in-process streams at most (a queue consumer on a large machine: 8 streams, cores/8 threads each)


def decode_threads() -> int:
    """In-process decode threads of the one-stream layout: one per core, so decoding the next
    batch and the forward on this one take turns on every core (pipeline/README.md "Performance")."""
    return cores()


def stream_batch(n: int, batch_size: int, streams: int) -> int:
    """The batch size at which `n` images keep every one of `streams` streams busy to the end: as
    few rounds of `streams` batches as `batch_size` allows, the images shared out evenly over them
    (200 images, batch 64, 2 streams: 4 batches of 50, not 64+64+64+8 with a stream idle at the
    end; a queue consumer's lone message batch of 64 over 2 streams: 2 of 32). One stream: as given."""
    if streams <= 1 or n <= 0:
        return max(1, batch_size)
    rounds = math.ceil(n / (streams * batch_size))
    return max(1, math.ceil(n / (streams * rounds)))


def default_streams(workers: int | None = None) -> int:
    """Decode -> infer streams (`in_streams`): with in-process decoding two per core (at most
    MAX_STREAMS), each at one inference thread, so no decoder ever preempts a thread of a shared
    thread pool, and while one stream of a core holds the GIL (decoding, numpy) the other runs its
    forward, which releases it (measured on 2 cores, 64 and 224 px, embedded files and phone
    photos: 4 streams 1.05-1.20x 2 streams, pipeline/README.md "Results"); beside decode processes,
    one."""
    workers = default_workers() if workers is None else workers
    return 1 if workers > 0 else min(STREAMS_PER_CORE * cores(), MAX_STREAMS)


def default_threads(workers: int | None = None, streams: int | None = None) -> int:
    """ONNX Runtime intra-op threads: with in-process decoding, the cores shared out over the streams (one
    each by default; one stream: every core, the decoders take turns with the forward); beside
    decode processes, the cores they leave."""
    workers = default_workers() if workers is None else workers
    if workers > 0:
        return max(1, cores() - workers)
    return max(1, cores() // (default_streams(workers) if streams is None else max(1, streams)))


class Decoder:
    """images[i] -> (uint8 (3, crop, crop) array or None, i, the decoder's message or None): the
    bundle's `Pixels` of the i-th path; a file that cannot be decoded is a message, never a raise."""

    def __init__(self, paths: list, pixels: Pixels):
        self.paths, self.pixels = paths, pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.pixels(self.paths[i]), i, None
        except ImageError as e:
            return None, i, str(e)


def collate(batch) -> tuple[np.ndarray | None, list[int], dict[int, str]]:
    """(the decoded images stacked (N, 3, H, W), their indices, {index: message} of the others)."""
    good = [b for b in batch if b[0] is not None]
    errors = {b[1]: b[2] for b in batch if b[0] is None}
    return (np.stack([b[0] for b in good]) if good else None), [b[1] for b in good], errors


def prefetched(images: Decoder, batch_size: int, threads: int, ahead: int | None = None):
    """Collated batches of `images` in order, decoded image by image by `threads` background
    threads (so even a lone batch, a queue consumer's message batch, is decoded by every thread).
    `ahead` batches are decoded while the model runs on the current one (default DECODE_AHEAD);
    0: decoding and the forward take turns, each with every core."""
    ahead = DECODE_AHEAD if ahead is None else ahead
    todo = iter(range(len(images)))
    pending: deque = deque()

    def submit(n: int) -> None:
        pending.extend(pool.submit(images.__getitem__, i) for i in itertools.islice(todo, n))

    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        submit((ahead + 1) * batch_size)
        while pending:
            batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            if ahead:
                submit(len(batch))
            yield collate(batch)
            if not ahead:
                submit(len(batch))


def in_processes(images: Decoder, batch_size: int, workers: int):
    """Collated batches of `images` in order, decoded by `workers` processes (large machines)."""
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        decoded = pool.imap(images.__getitem__, range(len(images)), chunksize=max(1, batch_size // workers))
        while batch := list(itertools.islice(decoded, batch_size)):
            yield collate(batch)


def infer(predictor: Predictor, items: list[SourceImage], x, good: list[int], errors: dict[int, str]) -> list[dict]:
    """One row per item, in order: ok / ood rows for decoded images, error rows for the rest."""
    preds: dict[int, dict] = {}
    if x is not None:
        try:
            preds = dict(zip(good, predictor.rows(*predictor.outputs(x))))
        except Exception as e:  # a batch the model cannot take: every image gets the error
            errors = {**errors, **{i: f"inference failed: {type(e).__name__}: {e}" for i in good}}
    rows = []
    for i, item in enumerate(items):
        row = preds.get(i) or predictor.error_row(errors.get(i, "no prediction"))
        rows.append({"image_id": printable(item.image_id), "source": printable(item.path),
                     "captured_date": item.captured_date,
                     **row})
    return rows


def in_streams(images: Decoder, batch_size: int, streams: int, job):
    """job(start, collated batch) of every batch of `images`, in order: `streams` threads each
    decode a whole batch and run `job` on it (the forward at the inference threads it was given), so
    each core works through decode -> forward -> decode ... with no barrier shared with the others;
    `streams` batches run at once and one more waits."""
    starts = iter(range(0, len(images), batch_size))

    def one(start: int):
        return job(start, collate([images[i] for i in range(start, min(start + batch_size, len(images)))]))

    with ThreadPoolExecutor(streams, thread_name_prefix="stream") as pool:
        pending = deque(pool.submit(one, s) for s in itertools.islice(starts, streams + 1))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(one, s) for s in itertools.islice(starts, 1))
            yield result


def predicted(predictor: Predictor, items: list[SourceImage], batch_size: int, workers: int | None = None,
              threads: int | None = None, ahead: int | None = None, streams: int | None = None):
    """Yield (the items of one batch, their rows), batch after batch in order: the one decode ->
    infer path of batch mode and of queue consumers. `workers` > 0: that many processes
    decode; 0: in-process, either `streams` > 1 threads that each decode and infer
    whole batches (`in_streams`; give the session cores/streams threads) or, with one stream, `threads`
    (default `decode_threads()`) background threads that decode the next batches while the model
    runs on this one with every core; None: `default_workers()`, `default_streams()`. Streams get batches of
    at most `batch_size`, evened out so none idles (`stream_batch`); a queue consumer passes its
    whole message batch as `batch_size`."""
    images = Decoder([it.path for it in items], predictor.pixels)  # uint8: normalised per batch
    workers = default_workers() if workers is None else workers
    streams = default_streams(workers) if streams is None else max(1, streams)
    streaming = workers == 0 and streams > 1
    if streaming:
        batch_size = stream_batch(len(items), batch_size, streams)

    def job(offset: int, batch):
        x, good, errors = batch
        chunk = items[offset:offset + batch_size]
        return chunk, infer(predictor, chunk, x, [i - offset for i in good], {i - offset: e for i, e in errors.items()})

    if streaming:
        yield from in_streams(images, batch_size, streams, job)
        return
    if workers > 0:
        loader = in_processes(images, batch_size, workers)
    else:
        loader = prefetched(images, batch_size, decode_threads() if threads is None else max(1, threads), ahead)
    for k, batch in enumerate(loader):
        yield job(k * batch_size, batch)


def run_batch(predictor: Predictor, table: PredictionTable | None, items: list[SourceImage], batch_size: int = 64,
              workers: int | None = None, progress: bool = True, on_rows=None, threads: int | None = None,
              ahead: int | None = None, streams: int | None = None) -> dict:
    """Predict every item and upsert each batch (one transaction each); returns the summary
    counts and images/s. `workers`, `threads`, `ahead`, `streams`: as `predicted` and `prefetched`."""
    from tqdm import tqdm
    counts = {"ok": 0, "ood": 0, "error": 0, "refused": 0}
    start = time.perf_counter()
    with tqdm(total=len(items), unit="img", disable=not progress, desc="predict") as bar:
        for _, rows in predicted(predictor, items, batch_size, workers, threads, ahead, streams):
            refused = table.upsert_split(rows) if table is not None else {}
            for i, error in refused.items():  # the row's own content: named, counted, the others kept
                print(f"warning: {rows[i]['source']}: the table refused its row ({error})", file=sys.stderr)
            if on_rows is not None:
                on_rows(rows)
            for i, r in enumerate(rows):
                counts["refused" if i in refused else r["status"]] += 1
            bar.update(len(rows))
            bar.set_postfix(counts)
    seconds = time.perf_counter() - start
    n = sum(counts.values())
    return {**counts, "images": n, "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 1) if seconds > 0 else None}
