"""What the OOD filter adds to serving: each scorer's time on a batch's features against the model's
forward on that batch, measured side by side in one run (interleaved, median of repeats).

    python bench/bench_ood.py --checkpoint artifacts/uni/exp1/best.pt [--batch 16] [--repeats 30]
                                # its detectors fitted now on its training data (models.ood.fit_filter)
    python bench/bench_ood.py   # no checkpoint: the quick profile's network, untrained, and detectors
                                # fitted on random features of the embedded train split's size

Prints ms per batch for the forward and for every scorer, and the scorer's share of the forward
(the target: the default detector adds at most 5 %). The features come from the forward itself
(`model(x, features=True)`), so the only added work is the scoring.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from models import ood
from models.detectors import fit_all


def build(args):
    if args.checkpoint:
        from models import checkpoint as checkpoints
        from data.spec import load_spec
        state = checkpoints.read(args.checkpoint)
        spec = load_spec(args.data or state["args"]["data"])
        ckpt = checkpoints.load(args.checkpoint, spec)
        return ckpt.model.eval(), ckpt.paradigm, ood.fit_filter(ckpt, spec, progress=False)[0], ckpt.crop
    from models import build_model
    from models.paradigms import Head, Paradigm
    classes = tuple(f"c{i}" for i in range(10))
    paradigm = Paradigm("uni", None, classes, (Head("all", "softmax", classes),), "max_logit")
    model = build_model("efficientnet_lite0", paradigm, "none", 256, 512, 512).eval()
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(args.train, 512, generator=g), torch.arange(args.train) % 10
    filt = ood.OODFilter(fit_all(feats, labels, *ood.heads_linear(model)), "max_logit")
    return model, paradigm, filt, args.size


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--data", help="dataset of the checkpoint (default: the one it was trained on)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="input size without a checkpoint (else its crop)")
    ap.add_argument("--train", type=int, default=1000, help="train features without a checkpoint")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, paradigm, filt, size = build(args)
    x = torch.randn(args.batch, 3, size, size)
    names = [*ood.SCORERS, *filt.detectors]
    times = {"forward": [], **{n: [] for n in names}}
    with torch.inference_mode():
        logits, feats = model(x, features=True)
        for _ in range(3):  # warm-up
            model(x, features=True)
        for _ in range(args.repeats):
            t = time.perf_counter()
            logits, feats = model(x, features=True)
            times["forward"].append(time.perf_counter() - t)
            for n in names:
                t = time.perf_counter()
                filt.score(n, logits, feats, paradigm)
                times[n].append(time.perf_counter() - t)
    fwd = statistics.median(times["forward"])
    print(f"batch {args.batch}, {size} px, {args.threads} threads, {args.repeats} repeats (median); "
          f"default scorer: {filt.default}")
    print(f"{'forward':>12}: {fwd * 1e3:8.2f} ms")
    for n in names:
        t = statistics.median(times[n])
        print(f"{n:>12}: {t * 1e3:8.3f} ms  = {100 * t / fwd:5.2f} % of the forward"
              f"{'  (default)' if n == filt.default else ''}")


if __name__ == "__main__":
    main()
