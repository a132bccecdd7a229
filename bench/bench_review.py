"""Benchmark of the review page (not a test: it prints what it measured).

A prediction table of --rows synthetic rows (10 labels, 3 model versions, 30 days; about 80 % ok,
12 % rejected as OOD, 8 % errors) in SQLite and in PostgreSQL (a temporary server started here,
as the tests start theirs, or --postgres URL); then the overview, the first page of each filter
and a detail view, each requested through the real app (Starlette's TestClient: routing,
queries, templates) after --warmup requests, the median of --repeats; last, the first grid of a
new app, which also reads the forms' label and version lists (the app rereads them once a minute).
Target: <= 300 ms each.

    python bench/bench_review.py                    # 100,000 rows, SQLite and a temporary PostgreSQL
    python bench/bench_review.py --rows 20000 --no-postgres
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.test_pipeline_support: the PostgreSQL server

from pipeline.review.app import create_app  # noqa: E402
from pipeline.review.roots import Roots  # noqa: E402
from pipeline.table import PredictionTable, redacted  # noqa: E402
from provenance import cpu_model  # noqa: E402

LABELS = ["normal", "defect", "dirt", "bubble_wash", "car_in_wash", "dashboard", "cup_holder", "glovebox",
          "washer_fluid", "seat"]
VERSIONS = ["0123456789abcdef", "1123456789abcdef", "2123456789abcdef"]


def synthetic_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        status = rng.choices(["ok", "ood", "error"], [80, 12, 8])[0]
        day = f"2026-11-{1 + i % 30:02d}"
        row = {"image_id": f"day{day}/IMG_{i:07d}.jpg#{i:016x}", "model_version": VERSIONS[i % 3],
               "model_name": "pmg-uni", "source": f"/photos/{day}/IMG_{i:07d}.jpg", "captured_date": day,
               "status": status, "processed_at": f"{day}T12:00:00+00:00"}
        if status != "error":
            p1 = rng.uniform(0.3, 1.0)
            a, b = rng.sample(LABELS, 2)
            score = rng.gauss(5.0, 1.0) - (3.0 if status == "ood" else 0.0)
            row.update(top1_label=a, top1_prob=p1, top2_label=b, top2_prob=rng.uniform(0, min(p1, 1 - p1 + 0.2)),
                       top2_rule="coherent", ood_score=score, ood_scorer="energy", ood_threshold=3.5,
                       is_ood=status == "ood")
        else:
            row["error"] = "file not found"
        yield row


def fill(url: str, n: int) -> None:
    table, batch = PredictionTable(url), []
    for row in synthetic_rows(n):
        batch.append(row)
        if len(batch) == 5000:
            table.upsert(batch)
            batch = []
    table.upsert(batch)
    table.close()


REQUESTS = [
    ("overview", "/", {}),
    ("all rows, by OOD score", "/rows", {}),
    ("OOD rejected", "/rows", {"status": "ood"}),
    ("errors", "/rows", {"status": "error"}),
    ("top-1 = dirt", "/rows", {"top1": "dirt"}),
    ("second label = defect", "/rows", {"top2": "defect"}),
    ("margin < 0.05, by margin", "/rows", {"margin_below": "0.05", "sort": "margin"}),
    ("by margin", "/rows", {"sort": "margin"}),
    ("model version", "/rows", {"version": VERSIONS[1]}),
    ("day", "/rows", {"day": "2026-11-15"}),
    ("day, newest first", "/rows", {"day": "2026-11-15", "sort": "recent"}),
    ("ok, top-1 = seat, by margin", "/rows", {"status": "ok", "top1": "seat", "sort": "margin"}),
    ("page 50 of OOD rejected", "/rows", {"status": "ood", "page": "50"}),
    ("detail view", "/row", {"id": "day2026-11-01/IMG_0000000.jpg#0000000000000000", "version": VERSIONS[0]}),
]

COLD = "OOD rejected, form lists re-read"


def timings(url: str, root: Path, warmup: int, repeats: int) -> dict[str, float]:
    from starlette.testclient import TestClient
    app, out = create_app(url, "predictions", Roots([root])), {}
    with TestClient(app, base_url="http://127.0.0.1") as client:  # one event-loop thread, as under uvicorn
        for name, path, params in REQUESTS:
            out[name] = timed(client, path, params, warmup, repeats)
    times = []
    for _ in range(repeats):  # a new app: its first grid also reads the form lists (once a minute)
        with TestClient(create_app(url, "predictions", Roots([root])), base_url="http://127.0.0.1") as client:
            start = time.perf_counter()
            client.get("/rows", params={"status": "ood"})
            times.append((time.perf_counter() - start) * 1000)
    out[COLD] = statistics.median(times)
    return out


def timed(client, path: str, params: dict, warmup: int, repeats: int) -> float:
    """Median ms of `repeats` requests after `warmup` (the first fills the form lists' cache)."""
    for _ in range(warmup):
        response = client.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text[:300])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.get(path, params=params)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--postgres", help="a PostgreSQL URL to use (default: start a temporary server)")
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()
    results, server = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"SQLite": os.path.join(tmp, "p.db")}
        if not a.no_postgres:
            if a.postgres is None:
                from tests.test_pipeline_support import PostgresServer
                server = PostgresServer().start()
            urls["PostgreSQL"] = a.postgres or server.url
        try:
            for kind, url in urls.items():
                start = time.perf_counter()
                fill(url, a.rows)
                print(f"{kind} ({redacted(url)}): {a.rows:,} rows written in {time.perf_counter() - start:.1f} s",
                      file=sys.stderr)
                results[kind] = timings(url, Path(tmp), a.warmup, a.repeats)
        finally:
            if server is not None:
                server.stop()
    print(f"review page, {a.rows:,} rows, median of {a.repeats} after {a.warmup} warm-up requests, ms "
          f"({cpu_model()}, {os.cpu_count()} cores)")
    kinds = list(results)
    print(f"| request | {' | '.join(kinds)} |\n|---|{'---:|' * len(kinds)}")
    for name in [n for n, _, _ in REQUESTS] + [COLD]:
        print(f"| {name} | {' | '.join(f'{results[k][name]:.1f}' for k in kinds)} |")


if __name__ == "__main__":
    main()
