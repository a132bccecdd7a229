"""A wrong Redis password fails at once with one line, for the producer and the consumer alike
(redis-py's AuthenticationError is a ConnectionError: a consumer used to retry it for ever); a
Redis with a password behind TLS (`rediss://`) serves produce and consume, tried against a local
redis-server with a self-signed certificate (skipped, with the reason, where that cannot start)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.builders import write_images
from tests.test_pipeline_support import by_path, free_port, pipeline_cli, wait_port


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


def test_a_wrong_redis_password_fails_fast_with_one_line(redis_with_password, bundles, tmp_path):
    port = redis_with_password
    src = tmp_path / "src"
    write_images(src, 2)
    wrong = f"redis://:wrong@127.0.0.1:{port}/0"
    proc = pipeline_cli("produce", "--source", src, "--date", "today", "--redis", wrong, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Redis refused the credentials") and "wrong" not in proc.stderr
    proc = pipeline_cli("consume", "--bundle", bundles["uni"], "--table", tmp_path / "p.db", "--redis", wrong,
                        "--threshold", "0", "--exit-when-empty", "--max-idle", "60", check=False)
    assert proc.returncode == 1 and "Redis refused the credentials" in proc.stderr.splitlines()[-1]
    assert "redis_unavailable" not in proc.stderr  # failed at once, never retried as an outage
    ok = f"redis://:s3cret@127.0.0.1:{port}/0"
    assert pipeline_cli("produce", "--source", src, "--date", "today", "--redis", ok).returncode == 0


@pytest.fixture
def tls_redis(tmp_path):
    """redis-server with --requirepass s3cret listening only for TLS; (port, CA certificate)."""
    for tool in ("redis-server", "openssl"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                           "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                           str(cert)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a self-signed certificate: {made.stderr.strip()[-200:]}")
    port = free_port()
    log = tmp_path / "redis.log"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file",
                             str(cert), "--tls-auth-clients", "no", "--requirepass", "s3cret", "--dir",
                             str(tmp_path), "--save", ""], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=10)
    except TimeoutError:
        proc.kill()
        pytest.skip(f"redis-server could not listen for TLS (built without TLS?): {log.read_text()[-300:]}")
    yield port, cert
    proc.terminate()
    proc.wait(20)


def test_rediss_with_a_password_serves_produce_and_consume(tls_redis, bundles, tmp_path):
    port, ca = tls_redis
    src = tmp_path / "src"
    write_images(src, 6)
    url = f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    out = pipeline_cli("produce", "--source", src, "--date", "today", "--redis", url)
    assert '"published": 6' in out.stdout
    db = tmp_path / "p.db"
    pipeline_cli("consume", "--bundle", bundles["uni"], "--table", db, "--redis", url, "--threshold", "0",
                 "--exit-when-empty", "--max-idle", "60", "--block-ms", "200")
    from pipeline.table import PredictionTable
    assert len(by_path(PredictionTable(str(db)).query())) == 6
    # The password is checked behind TLS too, and a certificate nobody vouches for is refused: one line each.
    for bad, expect in ((url.replace("s3cret", "wrong"), "Redis refused the credentials"),
                        (url.split("?")[0], "cannot reach Redis")):
        proc = pipeline_cli("produce", "--source", src, "--date", "today", "--redis", bad, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {expect}") and "Traceback" not in proc.stderr
        assert "s3cret" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
