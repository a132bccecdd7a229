"""The GPU profile in one run: the paper's configuration (ResNet-50, 550 -> 448 px,
AMP fp16 with a GradScaler, channels_last, batch 16) on a CUDA GPU, measured end to end.

    python bench/bench_gpu.py --out results/gpu                   # on a machine with a GPU
    python bench/bench_gpu.py --out /tmp/gpu --device cpu --smoke  # the same path, tiny, on a CPU

It runs, each as a user would, and writes what they gave to OUT/summary.md (the table for
docs/performance.md, "The GPU profile") and OUT/summary.json:
1. bench/bench_step.py's comparison at the paper's size: images/s of the reference's PMG step
   (whole network in each of the four passes, fp32, NCHW) and of the step-skipping step (fp32,
   AMP, AMP + channels_last), peak GPU memory of each, and that every AMP loss was finite;
2. `train.py --profile paper --pretrained none` for --epochs epochs on the embedded dataset
   (generated when --data has none): training images/s, peak GPU memory, val accuracy;
3. `python -m pipeline predict --checkpoint` (its release bundle on ONNX Runtime: the CUDA provider
   when onnxruntime-gpu is installed, else the CPU) over the dataset's test split: images/s;
4. `pytest -m cuda`: the tests that need a GPU (tests/test_devices.py).
A step that fails is recorded with its exit status and the end of its output; the others still run.
The exit status is 1 when any step failed. --smoke shrinks every size (ResNet-18, 32 px, one step)
so that a test can run the whole script on a CPU; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from utils import read_summary

ROOT = Path(__file__).resolve().parents[1]

PAPER_STEP = ["--backbone", "resnet50", "--size", "448", "--batch-size", "16", "--steps", "10", "--warmup", "3",
              "--repeats", "3", "--zero-grad", "zeros", "--bn-stats", "all"]
SMOKE_STEP = ["--backbone", "resnet18", "--size", "32", "--batch-size", "4", "--steps", "1", "--warmup", "0",
              "--branch-mid", "16", "--branch-out", "32", "--hidden", "16", "--zero-grad", "zeros", "--bn-stats", "all"]
STEP_LEVERS = ["base", "amp", "channels_last+amp"]  # the last is the paper profile's step
SMOKE_TRAIN = ["--backbone", "resnet18", "--resize", "36", "--crop", "32", "--branch-mid", "16", "--branch-out",
               "32", "--hidden", "16", "--batch-size", "8"]


def run(cmd: list, log, timeout: float) -> tuple[int, str, float]:
    """Run a command in the repository root; its output goes to the log and is returned."""
    print(f"$ {' '.join(map(str, cmd))}", file=log, flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"{(e.stdout or b'').decode(errors='replace')}\ntimed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    print(out, file=log, flush=True)
    print(f"(exit {rc}, {seconds:.1f} s)\n", file=log, flush=True)
    return rc, out, seconds


def failed(rc: int, out: str) -> dict:
    return {"ok": False, "exit": rc, "tail": out.strip().splitlines()[-15:]}


def environment(device: str) -> dict:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "cpu_cores": os.cpu_count()}
    if device.startswith("cuda"):
        env.update(card=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1))
    return env


def step_benchmark(a, log) -> dict:
    """bench_step.measure in this process: the rows it measured and the FLOP bound."""
    import bench_step
    args = bench_step.get_args_parser().parse_args(
        (SMOKE_STEP if a.smoke else PAPER_STEP) + ["--device", a.device, "--levers", *STEP_LEVERS])
    start = time.perf_counter()
    try:
        result = bench_step.measure(args)
    except Exception as e:  # a Divergence (non-finite AMP loss), out of memory, a CUDA error
        return failed(1, f"{type(e).__name__}: {e}")
    print(json.dumps(result, indent=1), file=log, flush=True)
    return {"ok": True, "seconds": round(time.perf_counter() - start, 1), "backbone": args.backbone,
            "size": args.size, "batch_size": args.batch_size, **result}


def train(a, data: Path, artifacts: Path, log) -> dict:
    workers = min(8, os.cpu_count() or 1)
    cmd = [sys.executable, "train.py", "--data", data, "--paradigm", "uni", "--profile", "paper",
           "--pretrained", "none", "--epochs", a.epochs, "--artifacts", artifacts, "--device", a.device,
           "--workers", workers, "--no-progress", *(SMOKE_TRAIN if a.smoke else [])]
    rc, out, seconds = run(cmd, log, a.timeout)
    if rc != 0:
        return failed(rc, out)
    run_dir = artifacts / "uni" / "exp1"
    rows = read_summary(run_dir)
    peaks = [int(m) for m in re.findall(r"peak GPU memory (\d+) MiB", out)]
    return {"ok": True, "seconds": round(seconds, 1), "workers": workers, "epochs": len(rows),
            "train_images_per_s": [float(r["train_images_per_s"]) for r in rows],
            "val_acc": float(rows[-1]["val_acc"]), "peak_mib": max(peaks) if peaks else None,
            "checkpoint": str(run_dir / "best.pt")}


def predict(a, data: Path, checkpoint: str, out_dir: Path, log) -> dict:
    table = out_dir / "predictions.db"
    table.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pipeline", "predict", "--checkpoint", checkpoint, "--source", data / "test",
           "--table", table, "--data", data, "--no-progress",
           # serving runs the checkpoint's release bundle on ONNX Runtime: CUDA where onnxruntime-gpu is installed
           "--device", "auto" if a.device == "cuda" else a.device]
    rc, out, seconds = run(cmd, log, a.timeout)
    if rc != 0:
        return failed(rc, out)
    lines = [line for line in out.splitlines() if line.startswith("{")]  # its JSON summary
    summary = json.loads(lines[-1]) if lines else {}
    return {"ok": True, "seconds": round(seconds, 1), "images": summary.get("images"),
            "images_per_s": summary.get("images_per_s"), "rows": {k: summary.get(k) for k in ("ok", "ood", "error")}}


def cuda_tests(a, log) -> dict:
    rc, out, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-rs",
                            "tests/test_devices.py"], log, a.timeout)
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", out))
    # pytest exits 5 when nothing ran (every cuda test deselected): not a failure on a CPU
    ok = rc == 0 or (rc == 5 and not a.device.startswith("cuda"))
    return {"ok": ok, "exit": rc, "seconds": round(seconds, 1), **counts,
            **({} if ok else {"tail": out.strip().splitlines()[-15:]})}


def markdown(r: dict) -> str:
    env = r["environment"]
    where = env.get("card", f"CPU ({env['cpu_cores']} cores)")
    lines = [f"GPU profile on **{where}** ({env.get('memory_gib', '?')} GiB), torch {env['torch']}, "
             f"CUDA {env.get('cuda', '-')}, Python {env['python']}; {r['date']}"
             + (" (smoke run: sizes shrunk, numbers meaningless)" if r["smoke"] else ""), ""]
    s = r["step"]
    if s["ok"]:
        lines += [f"PMG training step, {s['backbone']} / {s['size']} px, batch {s['batch_size']} "
                  f"(bench/bench_step.py; FLOP bound {s['bound']:.2f}x):", "",
                  "| step | images/s | vs reference | peak GPU MiB | steps, all losses finite |", "|---|---|---|---|---|"]
        for row in s["rows"]:
            peak = "" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            name = row["configuration"] + (" (the paper profile's)" if row["configuration"].endswith(
                STEP_LEVERS[-1]) else "")
            lines.append(f"| {name} | {row['images_per_s']:.1f} | {row['vs_reference']:.2f}x | "
                         f"{peak} | {row['finite_steps']} |")
    else:
        lines.append(f"step benchmark FAILED: {s['tail'][-1] if s['tail'] else ''}")
    t, p, c = r["train"], r["predict"], r["cuda_tests"]
    lines.append("")
    if t["ok"]:
        lines.append(f"- `train.py --profile paper --pretrained none`, {t['epochs']} epoch(s), {t['workers']} "
                     f"workers: {', '.join(f'{v:.0f}' for v in t['train_images_per_s'])} training img/s, peak "
                     f"GPU memory {t['peak_mib'] if t['peak_mib'] is not None else '-'} MiB, val acc "
                     f"{t['val_acc']:.3f}, {t['seconds']:.0f} s in all")
    else:
        lines.append(f"- train.py FAILED (exit {t['exit']}): {t['tail'][-1] if t['tail'] else ''}")
    if p.get("ok"):
        lines.append(f"- `pipeline predict --device {env['device']}` over {p['images']} test images: "
                     f"{p['images_per_s']} img/s ({p['rows']['ok']} ok, {p['rows']['ood']} ood, {p['rows']['error']} errors)")
    else:
        lines.append(f"- pipeline predict FAILED or not run: {(p.get('tail') or [''])[-1]}")
    lines.append(f"- `pytest -m cuda` (tests/test_devices.py): {c.get('passed', 0)} passed, {c.get('failed', 0)} "
                 f"failed, {c.get('skipped', 0)} skipped{'' if c['ok'] else ' -- FAILED'}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/gpu", help="folder for summary.md, summary.json, log.txt, artifacts")
    p.add_argument("--data", default="datasets/sofar_embedded", help="dataset (the embedded one is generated)")
    p.add_argument("--artifacts", help="where train.py writes its run (default OUT/artifacts)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=900, help="seconds each command may run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the whole path on a CPU in about a minute")
    a = p.parse_args(argv)
    import torch
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine, or "
              "pass --device cpu --smoke to try the path", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(a.data) if Path(a.data).is_absolute() else ROOT / a.data
    result = {"date": time.strftime("%Y-%m-%d"), "smoke": a.smoke, "environment": environment(a.device)}
    with open(out / "log.txt", "w") as log:
        if not (data / "dataset.yaml").is_file():
            rc, text, _ = run([sys.executable, "-m", "data.generate", "--out", data], log, a.timeout)
            if rc != 0:
                print(f"error: generating the dataset at {data} failed:\n{text[-2000:]}", file=sys.stderr)
                return 1
        steps = [("step", lambda: step_benchmark(a, log)),
                 ("train", lambda: train(a, data, Path(a.artifacts or out / "artifacts").resolve(), log)),
                 ("predict", lambda: predict(a, data, result["train"]["checkpoint"], out, log)
                  if result["train"]["ok"] else {"ok": False, "tail": ["no checkpoint: train.py failed"]}),
                 ("cuda_tests", lambda: cuda_tests(a, log))]
        for name, fn in steps:
            print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
            result[name] = fn()
            print(f"  {'ok' if result[name]['ok'] else 'FAILED'}", flush=True)
    (out / "summary.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "summary.md").write_text(text)
    print(text)
    return 0 if all(result[k]["ok"] for k in ("step", "train", "predict", "cuda_tests")) else 1


if __name__ == "__main__":
    sys.exit(main())
