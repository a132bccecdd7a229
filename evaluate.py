"""Evaluate trained checkpoints: task accuracy/F1 (RQ1), OOD AUROC (RQ2), top-2 on multi-label
images (RQ3), calibration and serving efficiency.

    python evaluate.py run --checkpoint artifacts/uni/exp1/best.pt --data datasets/sofar_embedded --out results/uni_exp1
    python evaluate.py report --artifacts artifacts --data datasets/sofar_embedded --out results

`run` writes OUT/metrics.json for one checkpoint; `report` evaluates every
ARTIFACTS/<run>/<trial>/best.pt (run = uni, multi, task_<task>) and writes OUT/REPORT.md, one CSV
per table and the figures; `--variant NAME=DIR` adds ablation tables (evaluation/ablation.py) of the
same runs trained with other flags. Model outputs are cached under OUT/cache (or --cache-dir), so every
image set is inferred once per checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.spec import SpecError, load_spec
from models.backbones import WeightsError
from models.checkpoint import CheckpointError
from provenance import IN_PROCESS_CORES, default_workers
from utils import resolve_device


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default="datasets/sofar_embedded", help="dataset folder holding dataset.yaml")
    common.add_argument("--device", default="auto", help="auto | cpu | cuda")
    common.add_argument("--batch-size", type=int, default=32)
    common.add_argument("--workers", type=int, help="image-loading processes (default: none up to "
                        f"{IN_PROCESS_CORES} cores, then a quarter of the cores: provenance.default_workers)")
    common.add_argument("--cache-dir", help="model-output cache (default OUT/cache)")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    r = sub.add_parser("run", parents=[common], help="evaluate one checkpoint -> OUT/metrics.json")
    r.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by train.py")
    r.add_argument("--out", default="results/run", help="output folder")
    rep = sub.add_parser("report", parents=[common], help="evaluate every trial -> OUT/REPORT.md + CSVs + PNGs")
    rep.add_argument("--artifacts", default="artifacts", help="folder of <run>/<trial>/best.pt")
    rep.add_argument("--out", default="results", help="output folder")
    rep.add_argument("--efficiency-images", type=int, default=64, help="test images timed per system")
    rep.add_argument("--variant", action="append", metavar="NAME=DIR",
                     help="also evaluate DIR/<run>/<trial>/best.pt (the same runs trained with other flags) and "
                          "add ablation tables against the main runs; repeatable")
    rep.add_argument("--extension", metavar="DIR",
                     help="a run/extend.sh folder: its EXTEND.md becomes a section (default: ARTIFACTS/extend "
                          "when it holds one)")
    return p


def extension_folder(args) -> Path | None:
    """--extension, else ARTIFACTS/extend when run/extend.sh wrote its EXTEND.md there (its default)."""
    if args.extension:
        from evaluation.extension import report_section
        report_section(Path(args.extension))  # a missing EXTEND.md: the one-line error before any work
        return Path(args.extension)
    default = Path(args.artifacts) / "extend"
    return default if (default / "EXTEND.md").is_file() else None


def main(argv=None) -> Path:
    args = get_args_parser().parse_args(argv)
    variants = {}
    if args.command == "report":
        from evaluation.ablation import parse_variants
        try:
            variants = parse_variants(args.variant)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        extension = extension_folder(args)
    device = resolve_device(args.device)
    if args.workers is None:
        args.workers = default_workers()
    spec = load_spec(args.data)
    out = Path(args.out)
    cache = args.cache_dir or out / "cache"
    if args.command == "run":
        from evaluation.checkpoint import evaluate_checkpoint, to_json
        metrics, _ = evaluate_checkpoint(args.checkpoint, spec, device=device, batch_size=args.batch_size,
                                         cache_dir=cache, progress=not args.no_progress, workers=args.workers)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.json"
        path.write_text(to_json(metrics))
    else:
        from evaluation.report import build_report
        path = build_report(args.artifacts, spec, out, device=device, batch_size=args.batch_size, cache_dir=cache,
                            progress=not args.no_progress, efficiency_images=args.efficiency_images,
                            workers=args.workers, variants=variants, extension=extension)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    try:
        main()
    except (SpecError, CheckpointError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
