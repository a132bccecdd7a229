"""The review page (pipeline/review/) through Starlette's TestClient over a table that `predict`'s
code wrote: the overview and every filter give the table's rows; a correction goes to the reviews
table, never into the prediction rows; export-reviews writes dataset folders that
`python -m data.concat add` accepts. Security: CSRF, path traversal, escaping, read-only, Host
header, the password of a PostgreSQL URL. Skipped where the web packages are missing."""
from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from tests.conftest import run_cli
from tests.review_support import HOSTILE, csrf_token, predicted_table
from tests.test_pipeline_support import pipeline_cli

pytest.importorskip("starlette", reason="the review page's packages are missing: pip install -r requirements.txt")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx: pip install -r requirements.txt")

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def made(bundles, tmp_path_factory):
    return predicted_table(bundles["uni"], tmp_path_factory.mktemp("review"))


def client(db, src, read_only=False, url=None):
    from starlette.testclient import TestClient

    from pipeline.review.app import create_app
    from pipeline.review.roots import Roots
    return TestClient(create_app(url or str(db), "predictions", Roots([src]), read_only, "ana"), base_url=BASE)


def rows_of(db):
    from pipeline.table import PredictionTable
    return PredictionTable(str(db)).query("ORDER BY image_id")


def ids_on(html: str) -> list[str]:
    from html import unescape
    return [unescape(m) for m in re.findall(r'<span class="mono">(.*?)</span>', html)]


def test_overview_and_filters_show_the_tables_rows(made):
    db, src = made
    rows, c = rows_of(db), client(*made)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "ood", "error")}
    assert counts["ok"] and counts["ood"] and counts["error"] == 5
    overview = c.get("/").text
    for s, n in counts.items():
        assert re.search(rf"status={s}\">{n}</a>", overview), s
    ood = sorted((r for r in rows if r["status"] == "ood"), key=lambda r: (r["ood_score"], r["image_id"]))
    assert ids_on(c.get("/rows", params={"status": "ood"}).text) == [r["image_id"] for r in ood]
    label = rows[0]["top1_label"] or next(r["top1_label"] for r in rows if r["top1_label"])
    got = ids_on(c.get("/rows", params={"top1": label, "sort": "recent"}).text)
    assert sorted(got) == sorted(r["image_id"] for r in rows if r["top1_label"] == label)
    low = sorted(r["image_id"] for r in rows if r["top1_prob"] is not None and r["top1_prob"] - r["top2_prob"] < 0.5)
    assert sorted(ids_on(c.get("/rows", params={"margin_below": "0.5"}).text)) == low
    assert sorted(ids_on(c.get("/rows", params={"status": "error"}).text)) == sorted(
        r["image_id"] for r in rows if r["status"] == "error")
    day, version = rows[0]["captured_date"], rows[0]["model_version"]
    assert len(ids_on(c.get("/rows", params={"day": day, "version": version}).text)) == len(rows)
    assert ids_on(c.get("/rows", params={"version": "nope"}).text) == []
    bad = c.get("/rows", params={"margin_below": "nan"})
    assert bad.status_code == 400 and "margin_below &#39;nan&#39;: give a number" in bad.text


def test_detail_shows_the_decision_and_a_correction_leaves_the_prediction_alone(made):
    db, src = made
    before, c = rows_of(db), client(*made)
    r = next(r for r in before if r["status"] == "ood")
    page = c.get("/row", params={"id": r["image_id"], "version": r["model_version"]})
    for text in (r["ood_scorer"], f"{r['ood_threshold']:.3f}", f"{r['ood_score']:.3f}", r["top1_label"],
                 r["top2_label"], r["model_version"], "rejected", r["calibration"],
                 *(f"{t}: {c}" for t, c in json.loads(r["task_answers"]).items())):
        assert text in page.text
    img = c.get(re.search(r'<img class="large" src="([^"]+)"', page.text).group(1).replace("&amp;", "&"))
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    form = {"csrf": csrf_token(page.text), "id": r["image_id"], "version": r["model_version"],
            "verdict": "labels", "label": "dirt", "new_label": "wheel", "reviewer": "ana"}
    done = c.post("/review", data=form, follow_redirects=False)
    assert done.status_code == 303
    again = c.get(done.headers["location"]).text
    assert "dirt, wheel" in again and "ana" in again
    bad = c.post("/review", data={**form, "new_label": "Bad Name"})
    assert bad.status_code == 400 and "lower-case letters" in bad.text
    assert rows_of(db) == before


def test_reviews_export_as_a_dataset_that_concat_add_accepts(made, tiny_data, tmp_path):
    from pipeline.review import store
    from pipeline.table import PredictionTable
    db, src = made
    table = PredictionTable(str(db))
    store.create(table)
    rows = rows_of(db)
    ood, ok, err = ([r for r in rows if r["status"] == s] for s in ("ood", "ok", "error"))
    for r in ood[:4]:
        store.record(table, r, "ana", "labels", ["wheel"])
    store.record(table, ok[0], "ana", "correct", [])
    store.record(table, ok[1], "ana", "labels", ["defect", "dirt"])
    store.record(table, ood[4], "ana", "correct", [])   # rejected, and rightly: irrelevant
    store.record(table, ood[5], "ana", "labels", ["wheel"])
    store.record(table, ood[5], "bo", "irrelevant", [])  # a later review replaces the earlier one
    out = tmp_path / "reviewed"
    summary = json.loads(pipeline_cli("export-reviews", "--table", db, "--out", out, "--source", src).stdout)
    assert summary["classes"] == sorted({"wheel", ok[0]["top1_label"]}) and summary["missing"] == []
    wheel = sorted(p.parent.parent.name for p in (out / "labelled").glob("*/wheel/*"))
    assert wheel == ["test", "train", "train", "val"]
    assert len(list((out / "ood" / "reviewed").iterdir())) == 2
    assert len(list((out / "multilabel" / "defect_and_dirt").iterdir())) == 1
    fragment = yaml.safe_load((out / "dataset.fragment.yaml").read_text())
    assert fragment["ood"]["reviewed"]["path"] == "ood/reviewed"
    assert fragment["multilabel"]["defect_and_dirt"]["labels"] == ["defect", "dirt"]
    grown = tmp_path / "grown"
    run_cli("-m", "data.concat", "add", "--dataset", tiny_data, "--task-data", out / "labelled", "--out", grown)
    spec = yaml.safe_load((grown / "dataset.yaml").read_text())
    assert list(spec["classes"])[-1] == "wheel" and spec["tasks"]["wheel"][1] == "wheel"
    assert sum(1 for _ in grown.glob("*/wheel/*")) == 4
    again = pipeline_cli("export-reviews", "--table", db, "--out", out, check=False)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].startswith("error: --out")


def test_posts_need_the_sessions_token_and_the_own_origin(made):
    db, src = made
    c = client(*made)
    r = rows_of(db)[0]
    token = csrf_token(c.get("/row", params={"id": r["image_id"], "version": r["model_version"]}).text)
    form = {"csrf": token, "id": r["image_id"], "version": r["model_version"], "verdict": "irrelevant",
            "reviewer": "mallory"}
    other = client(*made)  # another browser: its own session cookie, so the stolen token does not fit
    other.get("/")
    assert other.post("/review", data=form).status_code == 403
    assert c.post("/review", data={**form, "csrf": ""}).status_code == 403
    assert c.post("/review", data={**form, "csrf": "0" * 64}).status_code == 403
    assert c.post("/review", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.post("/review", content=json.dumps(form), headers={"content-type": "application/json"}).status_code == 415
    assert c.get("/review").status_code == 405
    cookie = client(*made).get("/").headers["set-cookie"]  # a new browser's first page sets the session
    assert "samesite=strict" in cookie.lower() and "httponly" in cookie.lower()
    from pipeline.review import store
    from pipeline.table import PredictionTable
    assert not any(v["reviewer"] == "mallory" for v in store.latest(PredictionTable(str(db))))


def test_images_are_read_only_inside_the_source_roots(made, tmp_path):
    db, src = made
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(next((src / "good").rglob("*.jpg")).read_bytes())
    link = src / "link.jpg"
    if not link.exists():
        os.symlink(secret, link)
    c = client(*made)
    inside = next((src / "good").rglob("*.jpg")).relative_to(src).as_posix()
    assert c.get(f"/image/0/{inside}").status_code == 200
    for probe in ("../secret.jpg", "..%2fsecret.jpg", "%2e%2e/secret.jpg", "good/..%2f..%2fsecret.jpg",
                  f"{secret}", f"%2F{str(secret).lstrip('/')}", "link.jpg", "good/./../link.jpg",
                  "good%00.jpg", "good\\..\\..\\secret.jpg", "/etc/passwd", "%2fetc%2fpasswd"):
        got = c.get(f"/image/0/{probe}")
        assert got.status_code == 404 and got.content in (b"not found", b"Not Found"), probe
    assert c.get(f"/image/1/{inside}").status_code == 404
    from pipeline.review.roots import Roots
    roots = Roots([src])
    for raw in ("../secret.jpg", "good/../../secret.jpg", str(secret), "link.jpg", "good/./x.jpg", "", "a\x00b"):
        assert roots.resolve(0, raw) is None, raw  # what a request's path becomes once decoded
    assert roots.locate(str(secret)) is None and roots.locate("../secret.jpg") is None
    assert roots.locate(str(link)) is None and roots.locate(inside) == (0, inside)


def test_a_hostile_file_name_is_shown_escaped(made):
    db, src = made
    c = client(*made)
    r = next(r for r in rows_of(db) if r["source"].endswith(HOSTILE))
    for page in (c.get("/rows", params={"sort": "recent"}), c.get("/row", params={"id": r["image_id"],
                                                                                  "version": r["model_version"]})):
        assert "<svg" not in page.text and "&lt;svg onload=alert(1)&gt;" in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
        assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_read_only_serves_no_form_and_refuses_posts(made):
    db, src = made
    c = client(*made, read_only=True)
    r = rows_of(db)[0]
    page = c.get("/row", params={"id": r["image_id"], "version": r["model_version"]}).text
    assert "<form" not in page and "read-only" in page
    assert c.post("/review", data={"id": r["image_id"]}).status_code in (404, 405)


def test_a_foreign_host_name_is_refused(made):
    c = client(*made)
    assert c.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert c.get("/", headers={"Host": "localhost:8000"}).status_code == 200


def test_cli_errors_are_one_line(made, tmp_path):
    db, src = made
    missing = pipeline_cli("review", "--table", db, "--source", tmp_path / "nope", check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        f"error: --source {tmp_path / 'nope'}: no such folder; give the folder(s) the table's images were "
        f"predicted from")
    typo = pipeline_cli("export-reviews", "--table", tmp_path / "typo.db", "--out", tmp_path / "o", check=False)
    assert typo.returncode == 1 and "no such SQLite file" in typo.stderr and not (tmp_path / "typo.db").exists()
    empty = tmp_path / "empty.db"
    from pipeline.table import PredictionTable
    PredictionTable(str(empty)).close()
    none = pipeline_cli("export-reviews", "--table", empty, "--out", tmp_path / "o", check=False)
    assert none.returncode == 1 and "has no reviews yet" in none.stderr
    blocked = run_cli("-c", "import sys; sys.modules['starlette'] = None; sys.argv[1:] = sys.argv[2:]; "
                      "from pipeline.cli import run; run()", "--", "review", "--table", db, "--source", src,
                      check=False)
    assert blocked.returncode == 1 and blocked.stderr.strip().startswith("error: the review page needs starlette")


def test_postgres_gives_the_same_pages_and_never_shows_the_password(made):
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    from pipeline.table import PredictionTable
    from tests.test_pipeline_support import PostgresServer
    db, src = made
    srv = PostgresServer().start()
    try:
        url = srv.url.replace("postgres@", "postgres:s3cret@")
        PredictionTable(url).upsert(rows_of(db))
        lite, pg = client(*made), client(db, src, url=url)
        for params in ({"status": "ood"}, {"sort": "margin", "margin_below": "0.3"}, {"status": "error"}):
            a, b = lite.get("/rows", params=params).text, pg.get("/rows", params=params).text
            assert ids_on(a) == ids_on(b)
        r = rows_of(db)[0]
        pages = [pg.get(p, params=q) for p, q in (("/", {}), ("/rows", {}), ("/row", {"id": r["image_id"],
                                                                                       "version": r["model_version"]}))]
        assert all(p.status_code == 200 for p in pages)
        assert "postgres:***@" in pages[0].text and not any("s3cret" in p.text for p in pages)
    finally:
        srv.stop()
