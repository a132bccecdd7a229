"""Add a task to a trained model without retraining from scratch (models/extend.py does the work).

    python -m data.concat add --dataset datasets/sofar --task-data NEW_TASK --out datasets/sofar+new
    python extend.py --checkpoint artifacts/uni/exp1/best.pt --data datasets/sofar+new

A uni or multi-task checkpoint grows its heads to the new class (old rows kept bit for bit, new
rows imprinted from the class's mean normalised features), is fine-tuned for a short budget with
uniform replay of the old classes' training images, and is written as a normal checkpoint
ARTIFACTS/<run>/<trial>/best.pt (recording its parent and what was added), then released to
ARTIFACTS/bundles/<id> (models/release.py: OOD filter, thresholds, ONNX graph; what serving reads).
A task-centric checkpoint gets the task-centric answer: one more model, trained by train.py on the
new task (released the same way). `--replay 0` is the naive baseline (new class only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data.spec import SpecError, load_spec
from models import checkpoint
from models.backbones import WeightsError
from models.checkpoint import CheckpointError
from models.extend import FULL_SHARE, TRAIN, ExtendError, Options, extend
from models.release import ReleaseError, describe, release
from utils import renamed_flag, resolve_device

BUNDLES = "bundles"  # ARTIFACTS/bundles: where the extended model is released

D = Options()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the trained model (best.pt of train.py)")
    p.add_argument("--data", required=True, help="its training dataset plus the new task (python -m data.concat add)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--steps", type=int,
                      help=f"fine-tune batches (4 optimizer steps each for PMG); 0: imprint only (default: "
                           f"{FULL_SHARE:g} x the batches of a full retrain with the parent's flags)")
    size.add_argument("--share", type=float, default=D.share,
                      help=f"instead of --steps: this share of a full retrain's batches (default {D.share:g})")
    size.add_argument("--epochs", type=float, help="instead of --steps: passes over the new class's train images")
    p.add_argument("--lr", type=float, default=D.lr, help=f"lr of the new layers; backbone lr/10 (default {D.lr})")
    p.add_argument("--train", choices=TRAIN, default=D.train,
                   help=f"what the fine-tune updates: the heads, the four classifiers, or all (default {D.train})")
    p.add_argument("--replay", type=float, default=D.replay,
                   help=f"share of every batch drawn from the old classes' train images; 0: naive, new class "
                        f"only (default {D.replay})")
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--artifacts", default="artifacts_extended",
                   help="the folder of training runs to write into: ARTIFACTS/<run>/<trial>/best.pt "
                        "(default artifacts_extended)")
    renamed_flag(p, "--output-dir", "--artifacts")
    p.add_argument("--trial", help="run name (default: the parent's trial)")
    p.add_argument("--device", default=D.device, help=f"auto (cuda when visible, else cpu) | cpu | cuda "
                                                      f"(default {D.device})")
    p.add_argument("--workers", type=int, default=D.workers)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-release", action="store_true", help="write the checkpoint only, no release bundle")
    return p


def main(argv=None) -> Path:
    a = get_args_parser().parse_args(argv)
    spec = load_spec(a.data)
    state = checkpoint.read(a.checkpoint)
    run = state["paradigm"] if state["paradigm"] != "task" else ""
    out_dir = Path(a.artifacts) / run / (a.trial or state["args"].get("trial") or "exp1")
    opts = Options(steps=None if a.epochs is not None else a.steps, epochs=a.epochs, share=a.share, lr=a.lr,
                   train=a.train,
                   replay=a.replay, batch_size=a.batch_size, seed=a.seed, workers=a.workers, device=a.device,
                   progress=not a.no_progress)
    out = extend(a.checkpoint, spec, out_dir if run else Path(a.artifacts), opts)
    added = checkpoint.read(out).get("added") or {}
    print(f"wrote {out}" + (f" (+{', '.join(added['classes'])}: {added.get('batches', 0)} batches, "
                            f"{added.get('optimizer_steps', 0)} optimizer steps in {added.get('seconds', 0)} s; "
                            f"val acc {checkpoint.read(out)['val']['val_acc']:.4f})" if added else ""), flush=True)
    if not a.no_release:
        bundle, created = release(out, spec.root, Path(a.artifacts) / BUNDLES, device=resolve_device(a.device),
                                  workers=a.workers, progress=not a.no_progress)
        print(describe(bundle, created))
    return out


if __name__ == "__main__":
    try:
        main()
    except (ExtendError, ReleaseError, SpecError, CheckpointError, WeightsError) as e:
        sys.exit(f"error: {e}")
