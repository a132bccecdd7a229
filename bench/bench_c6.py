"""Claim C6 alone: time the served systems of an artifacts folder exactly as `evaluate.py report`
does (Table 7: a warm-up round, then interleaved rounds) and print Table 7, the per-round cost
ratios and the C6 row of the claims table.

    python bench/bench_c6.py --artifacts artifacts [--data DIR] [--images 64] [--repeats 9]
    python bench/cpu_burner.py --procs 2 -- python bench/bench_c6.py --artifacts artifacts   # under load

Needs the first trial of `uni` and of every task-centric run (`multi` is timed too when present).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.spec import load_spec
from evaluation import claims, efficiency
from evaluation.report import find_checkpoints
from evaluation.views import trained_on
from models import checkpoint as checkpoints


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts", help="folder of <run>/<trial>/best.pt")
    ap.add_argument("--data", help="dataset folder (default: the one the runs were trained on)")
    ap.add_argument("--images", type=int, default=64, help="test images timed per system (the report's default)")
    ap.add_argument("--repeats", type=int, default=efficiency.REPEATS, help="timed rounds")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    artifacts = Path(args.artifacts).resolve()
    spec = load_spec(args.data or trained_on(artifacts))
    first = {run: checkpoints.load(next(iter(trials.values())), spec, args.device)
             for run, trials in find_checkpoints(artifacts, spec).items()}
    eff = efficiency.table7(first, spec, args.device, args.images, args.batch_size, repeats=args.repeats)
    if eff is None:
        print(f"error: {artifacts}: no run to time", file=sys.stderr)
        return 2
    print(eff[1].markdown(), "", sep="\n")
    timings = efficiency.timings(eff)
    if timings["uni"] and timings["task"]:
        print("per-round ratio uni / task:", " ".join(f"{u / t:.3f}" for u, t in zip(timings["uni"], timings["task"])))
    print(claims.markdown([claims.c6_cost(timings, len(spec.tasks))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
