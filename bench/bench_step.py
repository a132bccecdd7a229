"""Benchmark: training images/s of the step-skipping PMG step vs the PMG reference's procedure,
same model, same batch, same permutations, same SGD settings, one run.

The reference side is the paper code's procedure: the whole network in each of the four passes
(`naive=True`), each its own optimizer step, in fp32 and NCHW, PyTorch-1 `zero_grad` semantics
(`--zero-grad zeros`, the paper profile's default). The project's side runs the step-skipping
step with the levers given (channels_last, bf16 autocast on CPU / fp16 on CUDA, torch.compile).
Both are printed with their ratio and the bound that step-skipping allows: the FLOP ratio of the
reference's four passes to the step-skipping ones (forward + backward, counted by
torch.utils.flop_counter).

    python bench/bench_step.py --backbone resnet18 --size 128 --batch-size 16 --steps 3
    python bench/bench_step.py --backbone resnet50 --size 224 --levers   # every lever, interleaved

`--levers` times the reference and each configuration in turn (base, channels_last, amp,
channels_last+amp, compile, ...), --repeats rounds, and prints the median of each. Compile time
is reported separately (it is paid once per run, per granularity step: one graph each).
Not a test: it prints what it measured on this machine.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from engine import pmg_step
from models import BACKBONES, build_model
from models.paradigms import Head, Paradigm
from utils import replace_module

LEVERS = {"base": {}, "channels_last": {"channels_last": True}, "amp": {"amp": True},
          "channels_last+amp": {"channels_last": True, "amp": True}, "compile": {"compile": True},
          "compile+channels_last": {"compile": True, "channels_last": True},
          "compile+amp": {"compile": True, "amp": True},
          # EfficientNet-Lite0 as its library builds it: every convolution pads by F.pad (the
          # state before models.backbones.static_same_padding)
          "library_padding": {"library_padding": True},
          "channels_last+library_padding": {"channels_last": True, "library_padding": True}}


def with_library_padding(model: torch.nn.Module) -> torch.nn.Module:
    """Undo models.backbones.static_same_padding: every plain convolution of an EfficientNet-Lite0
    backbone back to the library's dynamic 'same' padding (the same weights and outputs)."""
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
    for name, m in list(model.named_modules()):
        if name.startswith("backbone.") and type(m) is torch.nn.Conv2d:
            conv = Conv2dDynamicSamePadding(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.dilation,
                                            m.groups, m.bias is not None)
            conv.load_state_dict(m.state_dict())
            replace_module(model, name, conv)
    return model


class Runner:
    """One configuration: its own copy of the model and optimizer, stepped on the same batch. AMP is
    bf16 on a CPU and fp16 with a GradScaler on CUDA, as train.py runs it."""

    def __init__(self, model, paradigm, x, y, naive, zero_grad, amp=False, channels_last=False, compile=False,
                 library_padding=False, bn_stats="step"):
        self.model = copy.deepcopy(model)
        if library_padding:
            self.model = with_library_padding(self.model)
        self.x = x
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and x.is_cuda)
        self.gen = torch.Generator().manual_seed(0)
        self.model.train()
        # One compiled graph per granularity step: forward(x, step=k) specialises on k.
        self.net = torch.compile(self.model) if compile else self.model
        self.paradigm, self.y, self.naive, self.zero_grad, self.amp = paradigm, y, naive, zero_grad, amp
        self.bn_stats = bn_stats
        self.compile_s = None
        self.steps = 0  # every one of them had finite losses: pmg_step raises Divergence otherwise
        if compile:
            t = time.perf_counter()
            self.step()  # the first step compiles the four graphs (forward and backward)
            self.compile_s = time.perf_counter() - t

    def step(self) -> list[float]:
        losses = pmg_step(self.net, self.paradigm, self.x, self.y, self.opt, self.gen, scaler=self.scaler,
                          amp=self.amp, naive=self.naive, zero_grad=self.zero_grad, bn_stats=self.bn_stats)
        self.steps += 1
        return losses

    def images_per_s(self, steps: int, warmup: int) -> float:
        for _ in range(warmup):
            self.step()
        sync(self.x)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.x)
        return steps * len(self.x) / (time.perf_counter() - start)


def sync(x):
    if x.is_cuda:
        torch.cuda.synchronize()


def peak_mib(make_runner, device: torch.device, steps: int = 2) -> float | None:
    """Peak CUDA memory of one configuration alone: its model, gradients, optimizer state and the
    activations of a step (MiB above what was allocated before; None on a CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    r = make_runner()
    for _ in range(steps):
        r.step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del r
    torch.cuda.empty_cache()
    return peak / 2 ** 20


def flops(model, paradigm, x, y, naive: bool, zero_grad: str, bn_stats: str = "step") -> int:
    """Forward + backward FLOPs of one training step (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode
    r = Runner(model, paradigm, x, y, naive, zero_grad, bn_stats=bn_stats)
    with FlopCounterMode(display=False) as counter:
        r.step()
    return counter.get_total_flops()


REFERENCE = "reference (naive x4, fp32, NCHW)"


def measure(a) -> dict:
    """Time the reference and each configuration of `a` (the parsed flags), interleaved; returns
    {"device", "bound", "rows": [{configuration, images_per_s, vs_reference, compile_s, peak_mib,
    finite_steps}]}."""
    torch.manual_seed(0)
    names = tuple(f"c{i}" for i in range(a.classes))
    paradigm = Paradigm("uni", None, names, (Head("classes", "softmax", names),), "max_logit")
    model = build_model(a.backbone, paradigm, "none", a.branch_mid, a.branch_out, a.hidden).to(a.device)
    x = torch.randn(a.batch_size, 3, a.size, a.size, device=a.device)
    y = torch.randint(0, a.classes, (a.batch_size, 1), device=a.device)
    if a.levers is None:
        configs = {"this run": dict(amp=a.amp, channels_last=a.channels_last, compile=a.compile)}
    else:
        configs = {k: LEVERS[k] for k in (a.levers or LEVERS)}
    dev = torch.cuda.get_device_name() if x.is_cuda else \
        f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    load = os.getloadavg()
    print(f"{a.backbone} {a.size}px batch {a.batch_size}, branches {a.branch_mid}/{a.branch_out}, "
          f"zero_grad={a.zero_grad}, bn_stats={a.bn_stats}, on {dev}; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start", flush=True)
    bound = flops(model, paradigm, x, y, True, a.zero_grad) / \
        flops(model, paradigm, x, y, False, a.zero_grad, a.bn_stats)
    makers = {REFERENCE: lambda: Runner(model, paradigm, x, y, True, a.zero_grad)}
    for name, kw in configs.items():
        makers[f"step-skipping, {name}"] = \
            lambda kw=kw: Runner(model, paradigm, x, y, False, a.zero_grad, bn_stats=a.bn_stats, **kw)
    peaks = {k: peak_mib(make, x.device) for k, make in makers.items()}  # each alone, before the others exist
    runners = {k: make() for k, make in makers.items()}
    speeds = {k: [] for k in runners}
    for _ in range(a.repeats):
        for k, r in runners.items():  # interleaved: every configuration once per round
            speeds[k].append(r.images_per_s(a.steps, a.warmup))
    median = {k: statistics.median(v) for k, v in speeds.items()}
    rows = [{"configuration": k, "images_per_s": median[k], "vs_reference": median[k] / median[REFERENCE],
             "compile_s": r.compile_s, "peak_mib": peaks[k], "finite_steps": r.steps} for k, r in runners.items()]
    return {"device": dev, "bound": bound, "rows": rows}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", choices=list(BACKBONES), default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--branch-mid", type=int, default=512)
    p.add_argument("--branch-out", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds (median)")
    p.add_argument("--zero-grad", choices=["zeros", "none"], default="zeros",
                   help="both sides (zeros: PyTorch 1.x, the reference's and the paper profile's)")
    p.add_argument("--bn-stats", choices=["step", "all"], default="step",
                   help="the step-skipping side (all: the paper profile's, every BN updates in every step)")
    p.add_argument("--amp", action="store_true", help="bf16 on CPU, fp16 with a GradScaler on CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (one graph per step)")
    p.add_argument("--levers", nargs="*", choices=list(LEVERS),
                   help="time these configurations (all when given alone) instead of the one of the flags")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None) -> None:
    a = get_args_parser().parse_args(argv)
    result = measure(a)
    print("\n| configuration | images/s | vs reference | compile s | peak MiB | steps, all losses finite |\n"
          "|---|---|---|---|---|---|")
    for r in result["rows"]:
        optional = ["" if r[k] is None else f"{r[k]:.0f}" for k in ("compile_s", "peak_mib")]
        print(f"| {r['configuration']} | {r['images_per_s']:.1f} | {r['vs_reference']:.2f}x | "
              f"{' | '.join(optional)} | {r['finite_steps']} |")
    load = os.getloadavg()
    print(f"\nFLOP bound (reference / step-skipping, forward+backward): {result['bound']:.2f}x; median of "
          f"{a.repeats} round(s) of {a.steps} steps; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")


if __name__ == "__main__":
    main()
