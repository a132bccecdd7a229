"""Training runs side by side (utils.trial_jobs, run/train_trials.sh --jobs): the rule, the runs it
trains, a failed trial that names its log while the others finish, and a stopped script that leaves
no training behind."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import utils
from tests.conftest import ROOT, TINY_TRAIN


@pytest.mark.parametrize("runs,cuda,n_cores,jobs,expected", [
    (1, False, 2, None, (1, 2)),     # one run: every core
    (4, False, 2, None, (2, 1)),     # one 1-thread run per core
    (3, False, 8, None, (3, 2)),     # as many at a time as there are runs, the cores shared among them
    (12, False, 1, None, (1, 1)),    # one core: one run
    (12, False, 8, None, (4, 2)),    # at most 4 runs, the cores shared out
    (12, False, 64, None, (4, 16)),
    (1, True, 16, None, (1, 0)),     # a GPU: one run, torch's default threads
    (12, True, 16, None, (1, 0)),
    (12, False, 8, 3, (3, 2)),       # --jobs N: N runs, the cores shared out
    (1, False, 2, 1, (1, 2)),        # --jobs 1: every core too
    (2, False, 8, 4, (2, 4)),        # never more at a time than there are runs
    (12, False, 2, 4, (4, 1)),       # never fewer than 1 thread
    (12, True, 16, 2, (2, 0)),
])
def test_trial_jobs_rule(runs, cuda, n_cores, jobs, expected):
    assert utils.trial_jobs(runs, cuda, n_cores, jobs) == expected


def test_trial_jobs_command_rejects_a_bad_count():
    proc = subprocess.run([".venv/bin/python", "-m", "utils", "trial-jobs", "--runs", "2", "--jobs", "two"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--jobs two: a positive whole number or auto" in proc.stderr
    proc = subprocess.run([".venv/bin/python", "-m", "utils", "trial-jobs", "--runs", "1", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == f"1 {utils.cores()}\n"  # one run: every core


def trials(data: Path, out: Path, *flags) -> list[str]:
    return ["sh", "run/train_trials.sh", "--paradigm", "task", "--task", "dirt", "--data", str(data),
            "--artifacts", str(out), *TINY_TRAIN, *flags]


def test_trials_side_by_side_log_each_run_and_share_the_cores(tiny_data, tmp_path):
    proc = subprocess.run(trials(tiny_data, tmp_path, "--trials", "3", "--jobs", "2", "--epochs", "1"), cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "task_dirt"
    threads = max(1, utils.cores() // 2)
    for i in (1, 2, 3):
        args = yaml.safe_load((run / f"exp{i}" / "args.yaml").read_text())
        assert args["seed"] == i - 1 and args["threads"] == threads and args["no_progress"]
        assert (run / f"exp{i}" / "best.pt").is_file()
        assert f"trial {i}/3 (seed {i - 1}): task_dirt/exp{i} started, {threads} torch thread(s)" in proc.stdout
        assert f"== task_dirt/exp{i} done in " in proc.stdout
        assert "epoch 1/1:" in (run / f"exp{i}.log").read_text()
    # one at a time: train.py's own output on the console, every core, no log files
    out = tmp_path / "serial"
    proc = subprocess.run(trials(tiny_data, out, "--trials", "1", "--epochs", "1"), cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1:" in proc.stdout and not list((out / "task_dirt").glob("*.log"))
    assert yaml.safe_load((out / "task_dirt" / "exp1" / "args.yaml").read_text())["threads"] == utils.cores()


def test_a_failed_trial_names_its_log_and_the_others_finish(tiny_data, tmp_path):
    run = tmp_path / "task_dirt"
    run.mkdir()
    (run / "exp2").write_text("a file where trial 2's run folder goes\n")
    proc = subprocess.run(trials(tiny_data, tmp_path, "--trials", "3", "--jobs", "2", "--epochs", "1"), cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"error: task_dirt/exp2 failed (exit 1); the end of {run / 'exp2.log'}:" in proc.stderr
    assert "error: 1 of 3 task_dirt trial(s) failed" in proc.stderr
    assert (run / "exp1" / "best.pt").is_file() and (run / "exp3" / "best.pt").is_file()


def training_processes(out: Path) -> list[int]:
    """Pids of live train.py processes that write under `out`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"train.py" in cmd and str(out).encode() in cmd:
            found.append(int(proc.name))
    return found


def test_a_stopped_script_leaves_no_training_behind(tiny_data, tmp_path):
    proc = subprocess.Popen(trials(tiny_data, tmp_path, "--trials", "2", "--jobs", "2", "--epochs", "50"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(training_processes(tmp_path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(training_processes(tmp_path)) == 2, "the two trials did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    deadline = time.monotonic() + 30
    while training_processes(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = training_processes(tmp_path)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left
