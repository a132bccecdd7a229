"""The same batch into SQLite and into a real PostgreSQL (initdb in tmp, pg_ctl on a free loopback
port) gives the same rows. Skipped with the reason where the server binaries or psycopg are missing."""
from __future__ import annotations

import shutil

import pytest

from tests.test_pipeline_support import PostgresServer, tiny_models, write_bad_files, write_images

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")


@pytest.fixture(scope="module")
def postgres():
    srv = PostgresServer()
    srv.start()
    yield srv
    srv.stop()


def test_sqlite_and_postgres_hold_the_same_rows(postgres, tmp_path_factory, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import Table
    ckpt = tmp_path / "best.pt"
    shutil.copy(tiny_models(tmp_path_factory)["uni"], ckpt)
    write_images(tmp_path / "src" / "good", 30)
    write_bad_files(tmp_path / "src" / "bad")
    items = list_source(tmp_path / "src")
    pred = Predictor.load(ckpt)
    pred.resolve_threshold()
    rows = []
    run_batch(pred, None, items, 16, 0, False, on_rows=rows.extend)
    stamp = "2026-11-23T10:00:00+00:00"
    rows = [{**r, "processed_at": stamp} for r in rows]
    lite, pg = Table(str(tmp_path / "p.db")), Table(postgres.url, "predictions")
    for t in (lite, pg):
        t.upsert(rows)
        t.upsert(rows[:10])  # a redelivered batch: still one row per image
    a = lite.query("ORDER BY image_id")
    b = pg.query("ORDER BY image_id")
    assert len(a) == len(b) == 38
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "processed_at"} == {k: v for k, v in y.items() if k != "processed_at"}
    assert {r["processed_at"][:19] for r in b} == {"2026-11-23T10:00:00"}
    assert lite.counts() == pg.counts() and pg.counts()["error"] == 5
    day = a[0]["captured_date"]
    assert lite.inspect(day, ["dirt", "defect"]) == pg.inspect(day, ["dirt", "defect"])
    names = {r["indexname"] for r in pg._run("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                               ("predictions",), fetch=True)}
    assert "predictions_day_idx" in names
