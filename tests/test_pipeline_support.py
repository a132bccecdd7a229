"""Helpers of the pipeline tests (no tests here): real redis-server / PostgreSQL servers on free
loopback ports, and the pipeline's command line. Their data: tests/builders.py and conftest's
`models`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

STREAM, GROUP = "pipeline:images", "pipeline-consumers"  # the code's defaults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class RedisServer:
    """redis-server on a free loopback port, persisted to an append-only file so it can restart."""

    def __init__(self, workdir: Path):
        if not shutil.which("redis-server"):
            pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
        self.dir, self.port, self.proc = Path(workdir), free_port(), None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=open(self.dir / "redis.log", "a"), stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb in tmp, pg_ctl on a free port); as the `postgres`
    user when the tests run as root, since the server refuses to run as root."""

    def __init__(self):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        initdb = shutil.which("initdb") or (str(bins[-1]) if bins else None)
        if not initdb:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = Path(initdb).parent
        self.prefix = []
        if os.geteuid() == 0:
            if not shutil.which("runuser"):
                pytest.skip("running as root without runuser: PostgreSQL cannot be started")
            try:
                import pwd
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and no 'postgres' user to run the server as")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        # Outside pytest's tmp tree (mode 700, root's): the server user must reach its data folder.
        self.dir, self.port = Path(tempfile.mkdtemp(prefix="pipeline-pg-")), free_port()
        if self.prefix:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data = self.dir / "pgdata"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *cmd):
        subprocess.run([*self.prefix, *map(str, cmd)], check=True, capture_output=True, timeout=120)

    def start(self) -> "PostgresServer":
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "--auth", "trust", "-E", "UTF8")
        return self.up()

    def up(self) -> "PostgresServer":
        """Start the server on its cluster (again, after `down`)."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "pg.log", "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def down(self) -> None:
        """Stop the server as a crash would (open connections break); the cluster stays."""
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)

    def read_only(self, on: bool) -> None:
        """Every transaction read-only from now on (`on`), as a failed-over standby answers, or
        writable again: the server setting, reloaded, reaches the open sessions too."""
        import psycopg
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute("SET default_transaction_read_only = off")
            c.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}")
            c.execute("SELECT pg_reload_conf()")

    def stop(self) -> None:
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)


def by_path(rows) -> dict[str, dict]:
    """Rows keyed by their image id without its content hash (`part0/img_00000.jpg#3f2a...`)."""
    return {r["image_id"].rsplit("#", 1)[0]: r for r in rows}


# `python -m pipeline` in a process where torch and torchvision cannot be imported: what the worker
# image is (it installs no torch). The queue tests start every consumer this way.
WITHOUT_TORCH = [sys.executable, "-c", "import runpy, sys; sys.modules.update(torch=None, torchvision=None); "
                 "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)"]


def pipeline_cli(*args, check=True):
    """`python -m pipeline ARGS...` from the repository root, as a user runs it."""
    return run_cli("-m", "pipeline", *args, check=check)


def start_consumer(bundle, db, url, name, log_dir, *extra, until_empty=True):
    """`python -m pipeline consume` in the background, logging to LOG_DIR/NAME.log; it exits once
    nothing is queued or pending (`until_empty`), else after --max-idle or on SIGTERM."""
    cmd = [*WITHOUT_TORCH, "consume", "--bundle", str(bundle), "--table", str(db),
           "--redis", url, "--consumer", name, "--batch-size", "32", "--threads", "1", "--block-ms", "200",
           "--min-idle-ms", "3000", *(["--exit-when-empty"] if until_empty else []), "--max-idle", "90", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            stderr=open(log_dir / f"{name}.log", "w"))


def finish(procs, timeout=150) -> list[dict]:
    """Each consumer's final stats (its last stdout line), once it has exited with status 0."""
    stats = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, f"consumer exited {p.returncode}"
        stats.append(json.loads(out.strip().splitlines()[-1]))
    return stats


def wait_for(condition, timeout: float, what: str, every: float = 0.1):
    """Poll `condition()` until it returns something true; that value. TimeoutError naming `what`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = condition()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout}s")


def rows_of(db):
    """Every row of the SQLite prediction table `db`."""
    from pipeline.table import PredictionTable
    t = PredictionTable(str(db))
    rows = t.query()
    t.close()
    return rows


def wait_rows(db, n, timeout=120):
    """Wait until the SQLite table `db` holds at least `n` rows."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if db.exists() and len(rows_of(db)) >= n:
            return
        time.sleep(0.2)
    raise TimeoutError(f"fewer than {n} rows after {timeout}s")


def pending(r, consumer) -> list[str]:
    """Ids of the messages delivered to `consumer` and not yet acknowledged."""
    return [p["message_id"] for p in r.xpending_range(STREAM, GROUP, "-", "+", 10_000, consumername=consumer)]


def stopped(proc) -> bool:
    """Whether the kernel has stopped `proc` (a SIGSTOP takes effect asynchronously)."""
    assert proc.poll() is None, f"the consumer exited {proc.returncode}"
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("t", "T")


def stop_holding_a_batch(proc, r, consumer, timeout=60) -> list[str]:
    """SIGSTOP the consumer `proc` at a moment it holds an unacknowledged batch; the batch's ids.
    Stopped, it can neither ack nor read more, so whatever is done to it next happens mid-batch."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        proc.send_signal(signal.SIGSTOP)
        while not stopped(proc):
            time.sleep(0.001)
        held = pending(r, consumer)
        if held:
            return held
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise TimeoutError(f"{consumer} held no batch within {timeout}s")
