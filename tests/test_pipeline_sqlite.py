"""The SQLite prediction table with real processes: three `pipeline predict`
processes writing one file at once, a `predict` killed with SIGKILL mid-run and run again (no row
lost or doubled, never "database is locked"), and a table on a full or read-only disk (one line
`error:` naming the file and the fix, never a traceback)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from tests.builders import write_images
from tests.conftest import ROOT
from tests.test_pipeline_support import rows_of, wait_rows


def predict(bundle, source, db, *extra) -> subprocess.Popen:
    """`python -m pipeline predict` in the background (one inference thread, decoding in-process)."""
    cmd = [sys.executable, "-m", "pipeline", "predict", "--bundle", str(bundle), "--threshold", "0", "--source",
           str(source), "--table", str(db), "--workers", "0", "--threads", "1", "--no-progress",
           "--score", "max_logit", *map(str, extra)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def done(proc, timeout=600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def check_table(db, n):
    """Exactly `n` rows, each image once, and a database SQLite finds intact."""
    ids = [r["image_id"] for r in rows_of(db)]
    assert len(ids) == len(set(ids)) == n
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_three_predict_processes_write_one_sqlite_file_at_once(bundles, tmp_path):
    write_images(tmp_path / "shared", 300)
    write_images(tmp_path / "other", 300, seed=9)
    db = tmp_path / "p.db"
    # two processes write the same 300 rows (every upsert conflicts), the third 300 others
    procs = [predict(bundles["uni"], tmp_path / "shared", db, "--batch-size", "8"),
             predict(bundles["uni"], tmp_path / "shared", db, "--batch-size", "16"),
             predict(bundles["uni"], tmp_path / "other", db, "--batch-size", "8")]
    results = [done(p) for p in procs]
    for rc, out, err in results:
        assert rc == 0 and "locked" not in err, err
        assert json.loads(out.strip().splitlines()[-1])["images"] == 300
    check_table(db, 600)


def test_a_predict_killed_mid_run_and_run_again_loses_and_doubles_nothing(bundles, tmp_path):
    write_images(tmp_path / "src", 600)
    db = tmp_path / "p.db"
    proc = predict(bundles["uni"], tmp_path / "src", db, "--batch-size", "8")
    wait_rows(db, 40, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    written = len(rows_of(db))
    assert 40 <= written < 600, "killed mid-run"
    rc, out, err = done(predict(bundles["uni"], tmp_path / "src", db, "--batch-size", "8"))
    assert rc == 0 and "locked" not in err, err
    check_table(db, 600)


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs mounted on TMP/disk (root with CAP_SYS_ADMIN only; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root with CAP_SYS_ADMIN is needed): {proc.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def one_line_error(err: str, db) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith(f"error: {db}: cannot write the prediction table"), err
    return lines[-1]


def test_a_table_on_a_full_disk_is_one_line_naming_the_file(bundles, small_disk, tmp_path):
    write_images(tmp_path / "src", 40)
    db = small_disk / "p.db"
    rc, _, err = done(predict(bundles["uni"], tmp_path / "src", db, "--batch-size", "8"))
    assert rc == 0, err
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill what is left of the disk
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    write_images(tmp_path / "src" / "more", 40, seed=4)
    rc, _, err = done(predict(bundles["uni"], tmp_path / "src", db, "--batch-size", "8"))
    assert rc == 1
    line = one_line_error(err, db)
    assert "its disk is full" in line and "give --table a file on another disk" in line


def make_read_only(folder):
    """Make `folder` unwritable: remount its tmpfs read-only as root, chmod it otherwise."""
    if os.geteuid() == 0:
        proc = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    else:
        folder.chmod(0o555)


@pytest.fixture
def read_only_home(tmp_path, request):
    """A folder to make read-only: the small tmpfs as root, a plain folder otherwise."""
    if os.geteuid() == 0:
        return request.getfixturevalue("small_disk")
    folder = tmp_path / "ro"
    folder.mkdir()
    request.addfinalizer(lambda: folder.chmod(0o755))
    return folder


def test_a_table_on_a_read_only_disk_is_one_line_naming_the_file(bundles, read_only_home, tmp_path):
    write_images(tmp_path / "src", 8)
    db = read_only_home / "p.db"
    rc, _, err = done(predict(bundles["uni"], tmp_path / "src", db))
    assert rc == 0, err
    make_read_only(read_only_home)
    for target in (db, read_only_home / "new" / "p.db"):  # the existing table, and a folder to create
        rc, _, err = done(predict(bundles["uni"], tmp_path / "src", target))
        assert rc == 1
        line = one_line_error(err, target)
        assert ("read-only" in line or "not writable" in line) and "give --table a writable path" in line
