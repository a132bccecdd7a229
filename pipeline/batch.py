"""Batch mode (one machine, no broker): source -> DataLoader (decoding workers) -> OOD filter +
classifier -> top-2 -> upsert into the prediction table, with a progress bar and a summary.

A file that cannot be decoded becomes an `error` row carrying the decoder's message; nothing a
single file contains stops the run.
"""
from __future__ import annotations

import time

from torch.utils.data import DataLoader

from data.loading import ImageSet, collate_skip_bad
from pipeline.model import Predictor
from pipeline.sources import SourceImage
from pipeline.table import PredictionTable


def decode_items(items: list[SourceImage], transform):
    """(stacked good images or None, their item indices, {item index: error message}) for a batch
    of items, whichever way it was loaded (DataLoader workers or in-process for queue consumers)."""
    return split_batch(collate_skip_bad([ImageSet([(it.path, i) for i, it in enumerate(items)], transform)[i]
                                         for i in range(len(items))]))


def split_batch(batch):
    x, idx, bad = batch
    return x, ([] if idx is None else idx.tolist()), {int(i): msg for i, msg in bad}


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
        rows.append({"image_id": item.image_id, "source": item.path, "captured_date": item.captured_date,
                     **row})
    return rows


def run_batch(predictor: Predictor, table: PredictionTable | None, items: list[SourceImage], batch_size: int = 64,
              workers: int = 2, progress: bool = True, on_rows=None) -> dict:
    """Predict every item and upsert each batch; returns the summary counts and images/s."""
    from tqdm import tqdm
    images = ImageSet([(it.path, i) for i, it in enumerate(items)], predictor.transform())
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_bad,
                        persistent_workers=False,
                        prefetch_factor=4 if workers > 0 else None)
    counts = {"ok": 0, "ood": 0, "error": 0}
    start = time.perf_counter()
    offset = 0
    with tqdm(total=len(items), unit="img", disable=not progress, desc="predict") as bar:
        for x, good, errors in map(split_batch, loader):
            chunk = items[offset:offset + batch_size]
            rows = infer(predictor, chunk, x, [i - offset for i in good],
                         {i - offset: e for i, e in errors.items()})
            offset += len(chunk)
            if table is not None:
                table.upsert(rows)
            if on_rows is not None:
                on_rows(rows)
            for r in rows:
                counts[r["status"]] += 1
            bar.update(len(rows))
            bar.set_postfix(counts)
    seconds = time.perf_counter() - start
    n = sum(counts.values())
    return {**counts, "images": n, "seconds": round(seconds, 3),
            "images_per_s": round(n / seconds, 1) if seconds > 0 else None}
