"""Benchmark of the served graph against eager PyTorch on one model (not a test: it prints what it measured).

Eager PyTorch (`model(x, features=True)` under inference_mode) vs the same model with BatchNorm
folded (models/serving.fold_batchnorm) vs what a release bundle serves: the folded model exported
by the dynamo exporter (models/serving.export_onnx) on ONNX Runtime (pipeline/model.py's session
options): ms per image at batch 1 and 16, at 64 and 224 px input, the speed-up over eager and the
largest absolute logit (and feature) difference from eager, fp32.
Modes are interleaved, median of --repeats.

    python bench/bench_serving.py                                   # the quick and paper profiles' models
    python bench/bench_serving.py --checkpoint artifacts/uni/exp1/best.pt
    python bench/bench_serving.py --models efficientnet_lite0:256:512 --sizes 64 --batches 1 16
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from models import build_model
from models.paradigms import Head, Paradigm
from models.serving import Features, export_onnx, fold_batchnorm


def random_model(spec: str, classes: int = 10):
    """`backbone:branch_mid:branch_out` with random weights and random BN statistics (so that
    folding has something to fold), eval mode: a stand-in for a trained checkpoint."""
    backbone, mid, out = (spec.split(":") + ["512", "1024"])[:3]
    names = tuple(f"c{i}" for i in range(classes))
    paradigm = Paradigm("uni", None, names, (Head("classes", "softmax", names),), "max_logit")
    torch.manual_seed(0)
    model = build_model(backbone, paradigm, "none", int(mid), int(out), 512 if int(out) >= 1024 else 256)
    return random_bn(model, 1), f"PMG-{backbone} {mid}/{out} (random weights)"


def random_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (so that a wrong fold shows), eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def eager(model):
    net = Features(model).eval()

    @torch.inference_mode()
    def run(x):
        return net(x)
    return run


def folded(model, size: int):
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    return eager(fold_batchnorm(model, probe))


def onnx(model, size: int, threads: int):
    from pipeline.model import onnx_session
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        f.write(export_onnx(model, size, "dynamo"))
        f.flush()
        session = onnx_session(f.name, threads, "cpu")

    def run(x):
        return [torch.from_numpy(a) for a in session.run(["logits", "features"], {"images": x.numpy()})]
    return run


def ms_per_image(fn, x, min_s: float) -> float:
    fn(x)  # warm-up
    n, t = 0, time.perf_counter()
    while True:
        fn(x)
        n += 1
        dt = time.perf_counter() - t
        if dt >= min_s:
            return dt / n / len(x) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a train.py checkpoint (default: random-weight models of --models)")
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0:256:512", "resnet50:512:1024"],
                    help="backbone:branch_mid:branch_out (the quick and paper profiles)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-s", type=float, default=1.0, help="seconds of calls per timing")
    ap.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        from models import checkpoint as checkpoints
        ck = checkpoints.load(a.checkpoint)
        models = [(ck.model, f"{a.checkpoint} ({ck.name})")]
    else:
        models = [random_model(s) for s in a.models]
    load = os.getloadavg()
    print(f"CPU, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    names = {"eager": "eager", "folded": "BN-folded", "onnx": "bundle graph (onnxruntime)"}
    shown = list(names)
    print("\n| model | input | batch | " + " | ".join(f"{names[m]} ms/img" for m in shown) + " | " +
          " | ".join(f"{names[m]} vs eager" for m in shown[1:]) + " | max abs logit diff " +
          " / ".join(shown[1:]) + " | max abs feature diff |")
    print("|---|---|---|" + "---|" * (2 * len(shown) + 1))
    for model, label in models:
        for size in a.sizes:
            t0 = time.perf_counter()
            modes = {"eager": eager(model), "folded": folded(model, size)}
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            modes["onnx"] = onnx(model, size, torch.get_num_threads())
            export_s = time.perf_counter() - t0
            probe = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(2))
            ref = modes["eager"](probe)
            diffs = {m: [(o - r).abs().max().item() for o, r in zip(fn(probe), ref)] for m, fn in modes.items()}
            for batch in a.batches:
                x = probe[:batch].contiguous()
                times = {m: [] for m in modes}
                for _ in range(a.repeats):
                    for m, fn in modes.items():
                        times[m].append(ms_per_image(fn, x, a.min_s))
                med = {m: statistics.median(v) for m, v in times.items()}
                d = lambda k: " / ".join(f"{diffs[m][k]:.1e}" for m in shown[1:])  # noqa: E731
                print(f"| {label} | {size} px | {batch} | " + " | ".join(f"{med[m]:.2f}" for m in shown) + " | " +
                      " | ".join(f"{med['eager'] / med[m]:.2f}x" for m in shown[1:]) + f" | {d(0)} | {d(1)} |",
                      flush=True)
            print(f"<!-- {label} at {size} px: fold {built:.1f} s, ONNX export + session {export_s:.1f} s -->")
    load = os.getloadavg()
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end (median of {a.repeats} interleaved runs)")


if __name__ == "__main__":
    main()
