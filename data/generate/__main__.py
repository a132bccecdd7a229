"""Command line: python -m data.generate --out DIR [--seed 0] [--size 96] [--train 60] ...

Counts are images per class per split; --ext per class of each external set; --ood per OOD set in each of its
two splits (ood/ reported, ood_val/ for choosing thresholds);
--multilabel images in the multi-label set. Refuses a non-empty DIR unless --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import COUNTS, generate


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.generate",
                                 description="Generate the SOFAR-like stand-in dataset.")
    ap.add_argument("--out", required=True, help="folder to write the dataset to")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=96, help="square image side in pixels")
    helps = dict(train="images per class in train", val="images per class in val", test="images per class in test",
                 ext="images per class in each external set", ood="images per OOD set in each split (ood, ood_val)",
                 multilabel="images in the multi-label set")
    for name, default in COUNTS.items():
        ap.add_argument(f"--{name}", type=int, default=default, help=f"{helps[name]} (default {default})")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-montage", action="store_true", help="skip montage.png")
    ap.add_argument("--force", action="store_true", help="replace the generated files in a non-empty --out")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    if out.is_dir() and any(out.iterdir()) and not a.force:
        print(f"error: {out} is not empty; pass --force to overwrite it", file=sys.stderr)
        return 2
    if min(a.train, a.val, a.test, a.ext, a.ood, a.multilabel) < 0 or a.size < 8:
        print("error: counts must be >= 0 and --size >= 8", file=sys.stderr)
        return 2
    c = generate(out, seed=a.seed, size=a.size, train=a.train, val=a.val, test=a.test, ext=a.ext, ood=a.ood,
                 multilabel=a.multilabel, workers=max(1, a.workers), montage=not a.no_montage, progress=True)
    n_cls = len(c["splits"]["train"])
    print(f"{out}: {c['total']} images in {c['seconds']:.1f} s "
          f"(train/val/test {a.train}/{a.val}/{a.test} x {n_cls} classes; "
          f"{len(c['external'])} external sets x 2 x {a.ext}; "
          f"ood {len(c['ood'])} x 2 x {a.ood}; multilabel {a.multilabel}; {a.size}px)")
    if not a.no_montage:
        print(f"montage: {out / 'montage.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
