"""A `--source` folder stays inside itself: a symbolic link out of it, a link loop, a
broken link, a FIFO or a socket with an image's name is skipped, counted and named by `predict`
and `produce`, never opened (a FIFO would block the reader) and never predicted. A manifest lists
files on purpose: a FIFO it names becomes an error row, at once."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.builders import write_images
from tests.conftest import ROOT
from tests.test_pipeline_support import RedisServer, by_path

DAY = "2026-11-20"


def pipeline(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS`; a hang on a FIFO fails the test instead of stalling it."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def hostile(tmp_path):
    """A source folder with 4 good images and every kind of entry that must be skipped; the
    skipped entries' names, and the socket (closed at the end)."""
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    write_images(src, 4)
    write_images(elsewhere, 2, seed=5)
    (src / "outside.jpg").symlink_to(elsewhere / "part0" / "img_00000.jpg")  # a file outside the root
    (src / "secrets").symlink_to(elsewhere / "part0")                           # a folder outside it
    (src / "loop.jpg").symlink_to(src / "loop.jpg")                            # a link loop
    (src / "part0" / "up").symlink_to(src)                                     # a link to an enclosing folder
    (src / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")                    # a broken link
    os.mkfifo(src / "fifo.jpg")
    (src / "to_fifo.png").symlink_to(src / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.png"))
    (src / "alias.jpg").symlink_to(src / "part0" / "img_00001.jpg")            # inside: listed
    yield src, {"outside.jpg", "secrets", "loop.jpg", "gone.jpg", "fifo.jpg", "to_fifo.png", "sock.png"}
    sock.close()


def warned(stderr: str) -> dict[str, str]:
    """{entry name: why} of the `warning: PATH: skipped, WHY` lines."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("warning: ") and ": skipped, " in line:
            path, why = line[len("warning: "):].split(": skipped, ", 1)
            out[os.path.basename(path)] = why
    return out


def test_predict_skips_counts_and_names_what_is_no_regular_file_inside_the_source(bundles, hostile, tmp_path):
    src, bad = hostile
    db = tmp_path / "p.db"
    proc = pipeline("predict", "--bundle", bundles["uni"], "--threshold", "0", "--source", src, "--table", db,
                    "--workers", "0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(bad) and summary["images"] == 5
    why = warned(proc.stderr)
    assert set(why) == bad
    assert why["fifo.jpg"].startswith("a FIFO") and why["sock.png"].startswith("a socket")
    assert why["loop.jpg"].startswith("a symbolic link loop") and why["gone.jpg"].startswith("a broken")
    assert "outside the source folder" in why["outside.jpg"] and "outside the source folder" in why["secrets"]
    assert why["to_fifo.png"].startswith("a symbolic link to a FIFO")
    from pipeline.table import PredictionTable
    rows = by_path(PredictionTable(str(db)).query())
    assert set(rows) == {f"part0/img_{i:05d}.jpg" for i in range(4)} | {"alias.jpg"}
    assert all(r["source"].startswith(str(src)) for r in rows.values())


def test_produce_publishes_only_the_regular_files_inside_the_source(hostile, tmp_path):
    redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")
    src, bad = hostile
    server = RedisServer(tmp_path / "redis").start()
    try:
        proc = pipeline("produce", "--source", src, "--date", "today", "--redis", server.url)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["skipped"] == len(bad) and out["published"] == 5 and set(warned(proc.stderr)) == bad
        r = redis.Redis.from_url(server.url, decode_responses=True)
        paths = {f["path"] for _, f in r.xrange("pipeline:images")}
        assert all(p.startswith(str(src)) and "outside" not in p for p in paths)
    finally:
        server.stop()


def test_a_fifo_named_by_a_manifest_is_an_error_row_at_once(bundles, tmp_path):
    write_images(tmp_path / "src", 2)
    os.mkfifo(tmp_path / "src" / "fifo.jpg")
    manifest = tmp_path / "src" / "manifest.csv"
    manifest.write_text(f"path,captured_date\npart0/img_00000.jpg,{DAY}\nfifo.jpg,{DAY}\n")
    db = tmp_path / "p.db"
    proc = pipeline("predict", "--bundle", bundles["uni"], "--threshold", "0", "--source", manifest,
                    "--table", db, "--workers", "0", "--no-progress", timeout=120)
    assert proc.returncode == 0, proc.stderr
    from pipeline.table import PredictionTable
    rows = by_path(PredictionTable(str(db)).query())
    assert rows["fifo.jpg"]["status"] == "error" and "not a regular file (a FIFO)" in rows["fifo.jpg"]["error"]
    assert rows["part0/img_00000.jpg"]["status"] in ("ok", "ood")


def test_a_name_that_is_not_utf8_is_skipped_and_a_nul_path_is_one_error_row(bundles, tmp_path):
    """A CP949 file name from a Windows zip (not UTF-8, which the table and the queue need) is
    skipped, named with its bytes escaped, and the other files are predicted; a manifest path with
    a NUL byte is one error row; a queued message carrying one is malformed on its own."""
    import shutil
    write_images(tmp_path / "src", 3)
    good = tmp_path / "src" / "part0" / "img_00000.jpg"
    shutil.copy(good, os.path.join(os.fsencode(tmp_path / "src"), "한글".encode("cp949") + b".jpg"))
    db = tmp_path / "p.db"
    proc = pipeline("predict", "--bundle", bundles["uni"], "--source", tmp_path / "src", "--table", db,
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["images"] == 3 and summary["skipped"] == 1 and not summary["error"]
    assert "src/\\xc7" in proc.stderr and "\\xdb.jpg: skipped" in proc.stderr and "not valid UTF-8" in proc.stderr
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f'path,captured_date\n{good},{DAY}\n"{tmp_path}/a\x00b.jpg",{DAY}\n')
    proc = pipeline("predict", "--bundle", bundles["uni"], "--source", manifest, "--table", tmp_path / "m.db",
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr
    from pipeline.table import PredictionTable
    rows = {r["source"]: r for r in PredictionTable(str(tmp_path / "m.db")).query()}
    nul = rows[f"{tmp_path}/a\\x00b.jpg"]
    assert nul["status"] == "error" and "NUL byte" in nul["error"] and rows[str(good)]["status"] in ("ok", "ood")
    from pipeline.streams import payload_error
    assert "NUL byte" in payload_error({"image_id": "x", "path": "/a\x00b.jpg"})
    assert payload_error({"image_id": "x", "path": "/a.jpg", "captured_date": DAY}) is None
