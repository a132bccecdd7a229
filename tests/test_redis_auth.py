"""A wrong Redis password fails at once with one line, for the producer and the consumer alike
(redis-py's AuthenticationError is a ConnectionError: a consumer used to retry it for ever)."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.builders import write_images
from tests.test_pipeline_support import free_port, pipeline_cli, wait_port


@pytest.fixture
def redis_with_password(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--requirepass", "s3cret"], stdout=subprocess.DEVNULL)
    wait_port(port)
    yield port
    proc.terminate()
    proc.wait(20)


def test_a_wrong_redis_password_fails_fast_with_one_line(redis_with_password, models, tmp_path):
    port = redis_with_password
    src = tmp_path / "src"
    write_images(src, 2)
    wrong = f"redis://:wrong@127.0.0.1:{port}/0"
    proc = pipeline_cli("produce", "--source", src, "--date", "today", "--redis", wrong, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Redis refused the credentials") and "wrong" not in proc.stderr
    start = time.monotonic()
    proc = pipeline_cli("consume", "--checkpoint", models["uni"], "--table", tmp_path / "p.db", "--redis", wrong,
                        "--threshold", "0", "--exit-when-empty", "--max-idle", "60", check=False)
    assert proc.returncode == 1 and "Redis refused the credentials" in proc.stderr.splitlines()[-1]
    assert time.monotonic() - start < 50  # failed, not retried until --max-idle
    ok = f"redis://:s3cret@127.0.0.1:{port}/0"
    assert pipeline_cli("produce", "--source", src, "--date", "today", "--redis", ok).returncode == 0
