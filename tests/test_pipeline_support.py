"""Helpers of the pipeline tests (no tests here): real redis-server / PostgreSQL servers on free
loopback ports, and the pipeline's command line. Their data: tests/builders.py and conftest's
`models`."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli


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
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.dir / "pg.log", "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        return self

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def pipeline_cli(*args, check=True):
    """`python -m pipeline ARGS...` from the repository root, as a user runs it."""
    return run_cli("-m", "pipeline", *args, check=check)
