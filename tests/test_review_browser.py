"""The review page in a real browser: playwright (PyPI) drives Debian's chromium against
`python -m pipeline review`. It opens the overview, filters to the OOD-rejected rows, opens one,
records a correction with a new label, and `export-reviews` then holds that image under the new
class. Screenshots (overview, grid, detail) go to $REVIEW_SCREENSHOTS when set, else to the test's
tmp folder (kept when it fails). Skipped, with the reason, where playwright or chromium is missing
(.ci/run installs chromium with apt; playwright never downloads a browser)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.review_support import predicted_table
from tests.test_pipeline_support import free_port, pipeline_cli, wait_port

INSTALL = "pip install -r requirements.txt"
sync_api = pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL}")
pytest.importorskip("starlette", reason=f"the review page's packages are missing: {INSTALL}")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Debian's chromium is not installed (apt-get install chromium)")


@pytest.fixture
def server(bundles, tmp_path):
    db, src = predicted_table(bundles["uni"], tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "review", "--table", str(db), "--source", str(src),
                             "--port", str(port), "--reviewer", "ana"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"the review server did not start: {proc.communicate()[1]}")
    yield f"http://127.0.0.1:{port}", db
    proc.terminate()
    proc.wait(10)


def test_a_correction_made_in_the_browser_comes_out_of_the_export(server, tmp_path):
    url, db = server
    shots = Path(os.environ.get("REVIEW_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(url + "/")
        assert page.locator("h1").inner_text() == "Overview"
        page.screenshot(path=shots / "overview.png")
        page.goto(url + "/rows")
        page.select_option("select[name=status]", "ood")
        page.click("button[type=submit]")
        assert "status=ood" in page.url
        cards = page.locator(".card")
        assert cards.count() > 0 and all(cards.nth(i).locator(".ood").count() for i in range(cards.count()))
        page.screenshot(path=shots / "rows.png", full_page=True)
        image_id = cards.first.locator(".mono").inner_text()
        cards.first.click()
        assert page.locator("h1").inner_text() == image_id
        assert page.locator("img").evaluate("i => i.naturalWidth") > 0  # the image made from the source root
        page.check("input[name=verdict][value=labels]")
        page.fill("input[name=new_label]", "wheel")
        page.screenshot(path=shots / "detail.png", full_page=True)
        page.click("form.review button[type=submit]")
        assert "wheel" in page.locator("table").nth(1).inner_text()
        browser.close()
    out = tmp_path / "export"
    pipeline_cli("export-reviews", "--table", db, "--out", out)
    with open(out / "reviews.csv", newline="") as f:
        exported = list(csv.DictReader(f))
    assert [(r["image_id"], r["labels"], r["reviewer"]) for r in exported] == [(image_id, "wheel", "ana")]
    assert exported[0]["file"].startswith("labelled/train/wheel/") and (out / exported[0]["file"]).is_file()
