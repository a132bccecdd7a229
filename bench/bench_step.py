"""Benchmark: training images/s of the step-skipping PMG step vs the naive step that runs the
whole network in every granularity pass (the paper's code), same model, same batch, one run.

    python bench/bench_step.py --backbone resnet18 --size 64 --batch-size 16 --steps 5

Not a test: it prints what it measured on this machine.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import pmg_step  # noqa: E402
from models import BACKBONES, build_model  # noqa: E402
from models.paradigms import Head, Paradigm  # noqa: E402


def images_per_s(model, paradigm, x, y, steps, warmup, naive, amp, channels_last) -> float:
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        pmg_step(model, paradigm, x, y, opt, gen, amp=amp, naive=naive)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", choices=list(BACKBONES), default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="bf16 on CPU, fp16 on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    names = tuple(f"c{i}" for i in range(a.classes))
    paradigm = Paradigm("uni", None, names, (Head("classes", "softmax", names),), "max_logit")
    model = build_model(a.backbone, paradigm).to(a.device)
    x = torch.randn(a.batch_size, 3, a.size, a.size, device=a.device)
    y = torch.randint(0, a.classes, (a.batch_size, 1), device=a.device)
    args = (a.steps, a.warmup)
    naive = images_per_s(model, paradigm, x, y, *args, naive=True, amp=a.amp, channels_last=a.channels_last)
    ours = images_per_s(model, paradigm, x, y, *args, naive=False, amp=a.amp, channels_last=a.channels_last)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.backbone} {a.size}px batch {a.batch_size} amp={a.amp} channels_last={a.channels_last} on {dev}")
    print(f"  naive step (full network x4): {naive:8.1f} images/s")
    print(f"  step-skipping PMG step:       {ours:8.1f} images/s")
    print(f"  speed-up: {ours / naive:.2f}x")


if __name__ == "__main__":
    main()
