"""What produced a result: the git commit (and whether the tree had uncommitted changes), the
versions of the main packages, Python, the platform, the CPU, the cores and threads, the device.

`provenance()` is written into train.py's args.yaml, into every checkpoint (models/checkpoint.py)
and into REPORT.md's header (`report_lines`). Importing this module does not import torch: the
thread count and the GPU's name are read only when torch is already loaded, or from the device
passed in.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
PACKAGES = ("torch", "torchvision", "numpy", "pillow", "scikit-learn", "scipy", "onnxruntime", "matplotlib")

IN_PROCESS_CORES = 8  # up to this many cores, inference decodes images in-process (default_workers)


def cores() -> int:
    """CPU cores this process may use: its CPU set, and no more than a container's CPU quota (a pod
    limited to 2 CPUs on a 64-core node sees 64 in its CPU set; 64 threads there would thrash)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or one this does not understand: the CPU set
        pass
    return max(1, n)


def default_workers() -> int:
    """DataLoader worker processes for inference over image files (evaluation, serving's batch
    mode): none up to IN_PROCESS_CORES cores, then a quarter of the cores. Worker processes start
    again for every image set, pickle every batch back and compete with the model's threads, so on
    a small machine decoding in the process (threads that overlap the forward) is faster; on a large
    one a few processes take the decoding off the model's cores. Measured: docs/performance.md."""
    n = cores()
    return 0 if n <= IN_PROCESS_CORES else n // 4


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"git {args[0]} failed"])[0])
    return proc.stdout


@functools.cache
def git_state() -> dict:
    """{commit, dirty} of the checkout this code runs from; commit None and `commit_error` (why)
    when git is missing or this folder is not a git checkout (an installed copy, an unpacked
    archive). Dirty: a tracked file differs from the commit (untracked files do not count).
    Read once per process, so every file a run writes names the same state."""
    try:
        top = Path(_git("rev-parse", "--show-toplevel").strip()).resolve()
        if top != ROOT:
            raise RuntimeError(f"{ROOT} is not the top of a git checkout")
        commit = _git("rev-parse", "HEAD").strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "commit_error": "git is not installed"}
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return {"commit": None, "dirty": None, "commit_error": str(e)[:200]}
    return {"commit": commit, "dirty": dirty}


@functools.cache
def packages() -> dict[str, str]:
    """{distribution: version} of the PACKAGES installed here (absent ones left out)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def provenance(device=None, threads: int | None = None) -> dict:
    """Plain data (YAML, JSON and weights_only checkpoints hold it): see the module docstring.
    `device`: a torch.device or its name (the CUDA device's name is added for cuda); `threads`:
    torch's intra-op threads (default: torch.get_num_threads() when torch is loaded, else None)."""
    torch = sys.modules.get("torch")
    if threads is None and torch is not None:
        threads = torch.get_num_threads()
    out = {**git_state(), "packages": dict(packages()), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu_model(), "cores": cores(), "threads": threads,
           "device": None if device is None else str(device)}
    if out["device"] and out["device"].startswith("cuda") and torch is not None:
        try:
            out["device_name"] = torch.cuda.get_device_name(torch.device(device))
            out["cuda"] = torch.version.cuda
        except Exception:  # no CUDA build or device here: a record never stops the run that writes it
            pass
    return out


def describe(p: dict | None) -> str:
    """One line: commit (clean/dirty), packages, Python, CPU, cores, threads, device."""
    if not p:
        return "no provenance recorded"
    if p.get("commit"):
        code = f"commit {p['commit']} ({'dirty: uncommitted changes' if p.get('dirty') else 'clean'})"
    else:
        code = f"commit unknown ({p.get('commit_error') or 'not recorded'})"
    pkgs = ", ".join(f"{k} {v}" for k, v in (p.get("packages") or {}).items())
    device = p.get("device") or "device not recorded"
    if p.get("device_name"):
        device += f" ({p['device_name']})"
    threads = "" if p.get("threads") is None else f", {p['threads']} torch thread{'' if p['threads'] == 1 else 's'}"
    return (f"{code}; {pkgs}; Python {p.get('python')} on {p.get('platform')}; CPU {p.get('cpu')}, "
            f"{p.get('cores')} cores{threads}; device {device}")


def report_lines(report: dict, runs: dict[str, dict | None]) -> list[str]:
    """Markdown lines for a report's header: the provenance of the run that wrote it and of the
    runs it reports (`runs`: {label: provenance or None}, runs with one description grouped),
    then a **Warning** line when the runs come from several commits, from a tree with uncommitted
    changes, or carry no provenance at all."""
    groups: dict[str, list[str]] = {}
    for label, p in runs.items():
        groups.setdefault(describe(p), []).append(label)
    lines = [f"- this report: {describe(report)}"]
    lines += [f"- {'all runs' if len(groups) == 1 and len(runs) > 1 else ', '.join(labels)}: {text}"
              for text, labels in groups.items()]
    recorded = {label: p for label, p in runs.items() if p}
    commits: dict[str, list[str]] = {}
    for label, p in recorded.items():
        commits.setdefault(p.get("commit") or "unknown", []).append(label)
    if len(commits) > 1:
        lines.append(f"- **Warning:** the runs come from {len(commits)} different commits, so their numbers may "
                     f"not come from the same code: " + "; ".join(f"{c}: {', '.join(ls)}" for c, ls in commits.items()))
    dirty = [label for label, p in recorded.items() if p.get("dirty")]
    if dirty:
        lines.append(f"- **Warning:** trained from a tree with uncommitted changes (the code is not exactly its "
                     f"commit): {', '.join(dirty)}")
    missing = [label for label, p in runs.items() if not p]
    if missing:
        lines.append(f"- **Warning:** no provenance recorded in the checkpoint (commit, packages and device "
                     f"unknown): {', '.join(missing)}")
    if report.get("dirty"):
        lines.append("- **Warning:** this report was written from a tree with uncommitted changes")
    return lines
