"""Command line: python -m data.generate --out DIR [--seed 0] [--size 96] [--train 60] ...

Counts are images per class per split; --ext per class of each external set (ext/, reported) and --ext-val
per class of its val split (ext_val/, for choosing defaults under the shift; default half of --ext); --ood per
OOD set in each of its two splits (ood/ reported, ood_val/ for choosing thresholds);
--multilabel images in the multi-label set. Refuses a non-empty DIR unless --force.
--hold-out CLASS writes DIR without that class and --hold-out-dir (default DIR_CLASS) with that
class alone (<split>/<class folder>/), the layout `python -m data.concat add --task-data` takes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .build import COUNTS, check_hold_out, ext_val_count, generate, holdable


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
    ap.add_argument("--ext-val", type=int, help="images per class in each external set's val split, for choosing "
                                                "defaults under the shift (default: half of --ext, rounded up)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-montage", action="store_true", help="skip montage.png")
    ap.add_argument("--force", action="store_true", help="replace the generated files in a non-empty --out")
    ap.add_argument("--hold-out", metavar="CLASS", help=f"leave this class out of --out and write it alone to "
                                                        f"--hold-out-dir (one of {', '.join(holdable())})")
    ap.add_argument("--hold-out-dir", help="folder for the held-out class (default: OUT_CLASS)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    try:
        check_hold_out(a.hold_out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    held = Path(a.hold_out_dir or f"{out}_{a.hold_out}") if a.hold_out else None
    for d, flag in ((out, "--out"), (held, "--hold-out-dir")):
        if d is None:
            continue
        if d.exists() and not d.is_dir():
            print(f"error: {flag} {d} is a file, not a folder", file=sys.stderr)
            return 2
        if d.is_dir() and any(d.iterdir()) and not a.force:
            print(f"error: {d} is not empty; pass --force to overwrite it", file=sys.stderr)
            return 2
    if min(a.train, a.val, a.test, a.ext, a.ext_val or 0, a.ood, a.multilabel) < 0 or a.size < 8:
        print("error: counts must be >= 0 and --size >= 8", file=sys.stderr)
        return 2
    c = generate(out, seed=a.seed, size=a.size, train=a.train, val=a.val, test=a.test, ext=a.ext,
                 ext_val=a.ext_val, ood=a.ood, multilabel=a.multilabel, workers=max(1, a.workers),
                 montage=not a.no_montage, progress=True, hold_out=a.hold_out, hold_out_dir=held)
    n_cls = len(c["splits"]["train"])
    print(f"{out}: {c['total']} images in {c['seconds']:.1f} s "
          f"(train/val/test {a.train}/{a.val}/{a.test} x {n_cls} classes; "
          f"{len(c['external'])} external sets x 2 x {a.ext} (+ {ext_val_count(a.ext, a.ext_val)} "
          f"in each val split); "
          f"ood {len(c['ood'])} x 2 x {a.ood}; multilabel {a.multilabel}; {a.size}px)")
    if held is not None:
        print(f"held out: {a.hold_out} ({a.train}/{a.val}/{a.test} train/val/test images) in {held}; add it with "
              f"'python -m data.concat add --dataset {out} --task-data {held} --out DIR'")
    if not a.no_montage:
        print(f"montage: {out / 'montage.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
