"""The worker's health: the consumer's heartbeat says live and ready while it serves,
live but not ready while Redis is down, and neither once it is stuck; the Deployment's probes read
the file the consumer writes, on the one writable volume of a read-only root filesystem; the
worker image's base is pinned by digest."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_pipeline_support import RedisServer, finish, start_consumer, wait_for

pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")


def probe(heartbeat, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.health", "--heartbeat", str(heartbeat), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def passes(heartbeat, *flags) -> bool:
    return probe(heartbeat, *flags).returncode == 0


def test_the_heartbeat_is_live_and_ready_live_during_an_outage_and_dead_when_stuck(bundles, tmp_path):
    import signal
    server = RedisServer(tmp_path / "redis").start()
    hb = tmp_path / "run" / "heartbeat"
    proc = start_consumer(bundles["uni"], tmp_path / "p.db", server.url, "c0", tmp_path, "--threshold", "0",
                          "--heartbeat", hb, "--max-backoff", "1", until_empty=False)
    try:
        wait_for(lambda: passes(hb, "--max-age", "10", "--ready"), 180, "a ready consumer")
        server.stop()
        wait_for(lambda: "redis_unavailable" in probe(hb, "--ready").stderr, 60, "not ready during the outage")
        assert passes(hb, "--max-age", "10"), "riding out an outage, the consumer is live"
        server.start()
        wait_for(lambda: passes(hb, "--max-age", "10", "--ready"), 60, "ready again after the outage")
        proc.send_signal(signal.SIGSTOP)  # stuck: no turn of its loop any more
        wait_for(lambda: not passes(hb, "--max-age", "3"), 30, "a stuck consumer failing liveness")
        out = probe(hb, "--max-age", "3")
        assert out.stderr.strip().startswith("error: ") and "the consumer is stuck" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        finish([proc], timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / name).read_text()) if d]


def test_the_probes_read_the_heartbeat_on_the_one_writable_volume(tmp_path):
    pod = docs("consumer.yaml")[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    heartbeat = next(e["value"] for e in c["env"] if e["name"] == "PIPELINE_HEARTBEAT")
    probes = {k: c[k]["exec"]["command"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, cmd in probes.items():
        assert cmd[:3] == ["python", "-m", "pipeline.health"]
        assert cmd[cmd.index("--heartbeat") + 1] == heartbeat
        assert ("--ready" in cmd) == (kind != "livenessProbe")  # an outage is no reason to restart
        # the probe's own command line works: fails without a heartbeat, passes on a fresh one
        local = [str(tmp_path / "hb") if a == heartbeat else a for a in cmd[1:]]
        assert subprocess.run([sys.executable, *local], cwd=ROOT, capture_output=True).returncode == 1
    from pipeline.health import Heartbeat
    Heartbeat(tmp_path / "hb").beat("serving")
    for cmd in probes.values():
        local = [str(tmp_path / "hb") if a == heartbeat else a for a in cmd[1:]]
        assert subprocess.run([sys.executable, *local], cwd=ROOT, capture_output=True).returncode == 0
    # read-only root; the heartbeat's folder is an emptyDir, the only writable mount
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == [str(Path(heartbeat).parent)]
    assert "emptyDir" in volumes[writable[0]["name"]]
    cron = docs("producer.yaml")[0]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_worker_image_is_pinned_by_digest_and_writes_nothing_to_its_root():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    base = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert base and all(re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", b) for b in base), base
    env = " ".join(re.findall(r"^ENV (.+)$", dockerfile, re.M))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
