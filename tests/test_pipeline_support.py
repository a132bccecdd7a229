"""Helpers of the pipeline tests (no tests here): a tiny dataset and tiny checkpoints, image files
good and bad, and real redis-server / PostgreSQL servers on free loopback ports."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_TRAIN, run_cli

CLASSES = {"normal": (90, 90, 90), "defect": (200, 40, 40), "dirt": (120, 90, 30)}
SPEC = """name: pipeline-tiny
version: 1
classes: {normal: 0_NORMAL, defect: 1_DEFECT, dirt: 2_DIRT}
splits: {train: train, val: val, test: test}
tasks: {defect: [normal, defect], dirt: [normal, dirt]}
"""


def image(rng, colour, size=32) -> Image.Image:
    a = np.clip(np.array(colour, np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def make_dataset(root: Path, per_class=(8, 6, 3)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val", "test"), per_class):
        for k, (c, colour) in enumerate(CLASSES.items()):
            d = root / split / f"{k}_{c.upper()}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image(rng, colour, 40).save(d / f"{c}_{i}.jpg", quality=90)
    (root / "dataset.yaml").write_text(SPEC)
    return root


def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """uni, task_defect and task_dirt checkpoints, trained once per session (1 epoch, tiny)."""
    base = tmp_path_factory.getbasetemp() / "pipeline_models"
    ckpts = {"uni": base / "uni/exp1/best.pt", "task_defect": base / "task_defect/exp1/best.pt",
             "task_dirt": base / "task_dirt/exp1/best.pt"}
    if all(p.is_file() for p in ckpts.values()):
        return ckpts
    data = make_dataset(base / "data")
    for paradigm, task in (("uni", None), ("task", "defect"), ("task", "dirt")):
        run_cli("train.py", "--data", data, "--paradigm", paradigm, *(["--task", task] if task else []),
                "--epochs", "1", "--output-dir", base, *TINY_TRAIN)
    return ckpts


def write_images(folder: Path, n: int, seed: int = 1, size: int = 32, mtime: float | None = None) -> list[Path]:
    """`n` small JPEGs (variants of the three classes) in subfolders of 500."""
    rng = np.random.default_rng(seed)
    colours = list(CLASSES.values())
    paths = []
    for i in range(n):
        p = folder / f"part{i // 500}" / f"img_{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        image(rng, colours[i % 3], size).save(p, quality=85)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        paths.append(p)
    return paths


def write_bad_files(folder: Path) -> dict[str, str]:
    """name -> expected status class ('error' or 'good') for every awkward kind of file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    ok = image(rng, CLASSES["dirt"], 48)
    buf = folder / "whole.jpg"
    ok.save(buf, quality=90)
    data = buf.read_bytes()
    buf.unlink()
    (folder / "corrupt.jpg").write_bytes(data[:20] + bytes(rng.integers(0, 256, 400, dtype=np.uint8)) + data[420:])
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notimage.png").write_text("this is a receipt, not a picture\n")
    ok.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(ok.convert("L"), np.uint16) * 257)).save(folder / "gray16.png")
    rgba = ok.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    # A decompression bomb: a tiny file that declares 20,000 x 20,000 pixels.
    Image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)
    return {"corrupt.jpg": "error", "truncated.jpg": "error", "zero.jpg": "error", "notimage.png": "error",
            "bomb.png": "error", "cmyk.jpg": "good", "gray16.png": "good", "rgba.png": "good"}


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
