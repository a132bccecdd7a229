"""The same batch into SQLite and into a real PostgreSQL (initdb in tmp, pg_ctl on a free loopback
port) gives the same rows, and the same SQL text (`?` placeholders; `?` and `%` inside quotes) means
the same in both. Skipped with the reason where the server binaries or psycopg are missing."""
from __future__ import annotations


import pytest

from tests.builders import write_bad_files, write_images
from tests.test_pipeline_support import PostgresServer

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")


@pytest.fixture(scope="module")
def postgres():
    srv = PostgresServer()
    srv.start()
    yield srv
    srv.stop()


def test_sqlite_and_postgres_hold_the_same_rows(postgres, bundles, tmp_path):
    from pipeline.batch import run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    from pipeline.table import PredictionTable
    write_images(tmp_path / "src" / "good", 30)
    write_bad_files(tmp_path / "src" / "bad")
    items = list_source(tmp_path / "src")
    pred = Predictor.load(bundles["uni"])
    rows = []
    run_batch(pred, None, items, 16, 0, False, on_rows=rows.extend)
    stamp = "2026-11-23T10:00:00+00:00"
    rows = [{**r, "processed_at": stamp} for r in rows]
    lite, pg = PredictionTable(str(tmp_path / "p.db")), PredictionTable(postgres.url, "predictions")
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
    by_answer = [lite.inspect(day, answers=[("defect", c)]) for c in ("normal", "defect")]
    assert by_answer == [pg.inspect(day, answers=[("defect", c)]) for c in ("normal", "defect")]
    assert sorted(r["image_id"] for found in by_answer for r in found) == sorted(
        r["image_id"] for r in a if r["status"] == "ok" and r["captured_date"] == day)
    assert lite.task_classes() == pg.task_classes() and set(pg.task_classes()) == {"defect", "dirt"}
    names = {r["indexname"] for r in pg.execute_sql("SELECT indexname FROM pg_indexes WHERE tablename = ?",
                                               ("predictions",), fetch=True)}
    assert "predictions_day_idx" in names


def test_a_table_written_before_task_answers_gains_the_column(postgres):
    from pipeline.table import COLUMNS, PredictionTable
    cols = ", ".join(f"{c} {t}" for c, t in COLUMNS if c != "task_answers")
    older = PredictionTable(postgres.url, "scratch")  # a connection; the table below is as an older version made it
    older.execute_sql(f"CREATE TABLE older ({cols}, PRIMARY KEY (image_id, model_version))")
    row = {"image_id": "a", "model_version": "v1", "model_name": "m", "source": "/a.jpg", "status": "ok",
           "captured_date": "2026-11-23"}
    older.execute_sql("INSERT INTO older (image_id, model_version, model_name, source, status, captured_date, "
                      "processed_at) VALUES (?, ?, ?, ?, ?, ?, now())", tuple(row.values()))
    t = PredictionTable(postgres.url, "older")
    assert "task_answers" in t.columns()
    assert t.query("", (), "image_id, task_answers") == [{"image_id": "a", "task_answers": None}]
    t.upsert([{**row, "image_id": "b", "task_answers": '{"defect":"defect"}'}])
    assert [r["image_id"] for r in t.inspect("2026-11-23", answers=[("defect", "defect")])] == ["b"]


def test_question_marks_and_percent_signs_in_sql_text_stay_text(postgres, tmp_path):
    """SQL is written once with `?` placeholders: a `?` or `%` inside a quoted string is not one."""
    from pipeline.table import PredictionTable
    rows = [{"image_id": name, "model_version": "v1", "model_name": "m", "source": f"/img/{name}",
             "captured_date": "2026-11-23", "status": "ok", "top1_label": label, "top2_label": "normal"}
            for name, label in (("what?.jpg", "dirt"), ("100%.jpg", "dirt"), ("plain.jpg", "defect"))]
    lite, pg = PredictionTable(str(tmp_path / "p.db")), PredictionTable(postgres.url, "literals")
    for t in (lite, pg):
        t.upsert(rows)
        got = t.query("WHERE (image_id = 'what?.jpg' OR image_id LIKE '100%') AND top1_label = ? "
                      "ORDER BY image_id", ["dirt"], "image_id")
        assert [r["image_id"] for r in got] == ["100%.jpg", "what?.jpg"]
        assert t.labels() == ["defect", "dirt", "normal"]
        assert t.existing_ids(["what?.jpg", "nope?"], "v1") == {"what?.jpg"}


def test_the_database_password_is_never_printed(postgres, bundles, tmp_path):
    """predict's JSON and query's error line name the table with the password masked (trust
    authentication ignores the password, so the URL works as given)."""
    import json

    from tests.test_pipeline_support import pipeline_cli
    url = postgres.url.replace("postgres@", "postgres:s3cret@")
    write_images(tmp_path / "src", 3)
    predict = pipeline_cli("predict", "--bundle", bundles["uni"], "--source", tmp_path / "src", "--table", url,
                           "--table-name", "masked", "--no-progress")
    assert json.loads(predict.stdout.strip().splitlines()[-1])["table"] == url.replace("s3cret", "***") + "#masked"
    query = pipeline_cli("query", "--table", url, "--table-name", "masked", check=False)
    assert query.returncode == 1 and "***" in query.stderr
    assert "s3cret" not in predict.stdout + predict.stderr + query.stdout + query.stderr


def test_a_3_kb_path_is_one_ok_row_and_a_complete_file_supersedes_its_error_row(postgres, bundles, tmp_path):
    """PostgreSQL's btree refuses an index row over 2.7 KB: a 3.2 KB source path is bounded in its
    image id (pipeline/sources.py) and predicted like any other. A file first seen truncated and
    then complete leaves one row, its good one."""
    import json

    from pipeline.sources import ID_CHARS
    from pipeline.table import PredictionTable
    from tests.builders import write_deep_image
    from tests.test_pipeline_support import pipeline_cli
    src = tmp_path / "src"
    deep = write_deep_image(src)
    [whole] = write_images(src, 1)
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) // 2])
    predict = lambda: json.loads(pipeline_cli("predict", "--bundle", bundles["uni"], "--source", src,  # noqa: E731
                                              "--table", postgres.url, "--table-name", "deep", "--no-progress").stdout)
    assert predict()["error"] == 1
    whole.write_bytes(data)
    assert predict()["error"] == 0
    t = PredictionTable(postgres.url, "deep")
    rows = {r["source"]: r for r in t.query()}
    t.close()
    assert len(rows) == 2 and {r["status"] for r in rows.values()} <= {"ok", "ood"}
    assert len(str(deep)) > 3200 and len(rows[str(deep)]["image_id"]) <= ID_CHARS
