"""Train one PMG model in one paradigm on a dataset folder (its dataset.yaml says the rest).

    python train.py --data datasets/sofar_embedded --paradigm uni --profile quick
    python train.py --data DIR --paradigm task --task defect --profile paper --trial exp1 --seed 1
    torchrun --nproc_per_node 4 train.py --data DIR --paradigm multi --profile paper

Every epoch validates on the val split (never test) and keeps best.pt (highest val accuracy)
and last.pt; `--resume` continues from last.pt of the same run folder or from a given file. At the
end, best.pt gets its temperature scaling fitted on the val split (models/calibration.py).
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from data.loading import AUGMENTS, ImageSet, collate_skip_bad, eval_transform, train_transform
from data.spec import SpecError, load_spec
from engine import METHODS, ZERO_GRAD, Divergence, cosine, evaluate, train_one_epoch
from models import BACKBONES, PARADIGMS, build_model, build_paradigm
from models import calibration, checkpoint
from models.backbones import WeightsError
from models.jigsaw import PERMUTATIONS
from models.pmg import BN_STATS
from models.mixing import MIXES, Mixer
from models.checkpoint import CheckpointError
from provenance import provenance
from utils import (append_summary, init_distributed, plain, renamed_flag, resolve_device, seed_everything,
                   truncate_summary)

# A profile fills every flag the command line leaves unset. `paper` is the paper's configuration,
# sized for a GPU (ResNet-50 at 448 px: on a few CPU cores an epoch takes hours, docs/training.md);
# `quick` is sized for a CPU.
PROFILES = {
    # channels_last with AMP: 1.22x the AMP step alone for ResNet-50 / 224 px (bf16 on this CPU,
    # bench/bench_step.py; docs/performance.md), and the layout tensor cores want on a GPU.
    "paper": dict(backbone="resnet50", pretrained="imagenet", resize=550, crop=448, epochs=20, amp=True,
                  channels_last=True, zero_grad="zeros", bn_stats="all"),
    # CPU-sized: a pretrained small backbone, 64 px and half-width PMG branches (the 3x3 conv to
    # 1024 channels costs more than the backbone at this size).
    "quick": dict(backbone="efficientnet_lite0", pretrained="imagenet", resize=72, crop=64, epochs=5,
                  branch_mid=256, branch_out=512, amp=False, channels_last=True, zero_grad="none", bn_stats="step"),
}
DEFAULTS = dict(batch_size=16, lr=2e-3, momentum=0.9, weight_decay=5e-4, workers=2, seed=0, trial="exp1",
                artifacts="artifacts", device="auto", branch_mid=512, branch_out=1024, hidden=512,
                granularities=[8, 4, 2], jigsaw="cycle", method="pmg", budget="epochs", bn_stats="step", mix="none",
                mix_prob=0.5, mix_alpha=1.0, threads=0, augment="paper")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="datasets/sofar_embedded", help="dataset folder holding dataset.yaml")
    p.add_argument("--paradigm", choices=list(PARADIGMS), default="uni",
                   help="uni: efficiency-centric; task: task-centric binary (needs --task); multi: multi-task")
    p.add_argument("--task", help="a task of the spec's 'tasks:' (paradigm task)")
    p.add_argument("--profile", choices=["auto", *PROFILES], default="auto",
                   help="fills unset flags: paper (GPU), quick (CPU); auto = paper on CUDA, quick otherwise")
    p.add_argument("--backbone", choices=list(BACKBONES))
    p.add_argument("--pretrained", help="none | imagenet | PATH to a local weights file")
    p.add_argument("--resize", type=int, help="train images are resized to this square, then cropped")
    p.add_argument("--crop", type=int, help="input size (train: random crop; evaluation and serving: centre crop)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="new layers; the backbone gets lr/10")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--granularities", type=int, nargs=3, help="jigsaw n of the three steps (8 4 2)")
    p.add_argument("--method", choices=METHODS,
                   help="pmg: the 4 progressive jigsaw steps per batch; plain: plain fine-tuning of the same "
                        "network and heads (one step per batch on the whole image)")
    p.add_argument("--budget", choices=["epochs", "steps"],
                   help="epochs: --epochs over this paradigm's data (the paper); steps: as many batches as the "
                        "efficiency-centric model gets in --epochs (equal compute)")
    p.add_argument("--jigsaw", choices=PERMUTATIONS,
                   help="cycle: no block stays in place (the PMG reference); uniform: any permutation")
    p.add_argument("--zero-grad", choices=ZERO_GRAD,
                   help="zeros: PyTorch 1.x zero_grad (the paper's code: every parameter gets weight decay and "
                        "momentum in each of the 4 steps); none: PyTorch 2's set_to_none")
    p.add_argument("--bn-stats", choices=BN_STATS,
                   help="step: a step-skipping PMG step updates the BatchNorm statistics of the layers its output "
                        "uses; all: the rest of the network also runs forward (no_grad) for its statistics, as "
                        "the reference's full forward does")
    p.add_argument("--mix", choices=MIXES,
                   help="cutmix | mixup: mix each batch with a partner of another class, soft targets by area "
                        "(or blend weight), before the jigsaw (models/mixing.py); none: single-label images")
    p.add_argument("--augment", choices=list(AUGMENTS),
                   help="training augmentation after the paper's crop and flip: paper (nothing more),\n"
                        "trivialaugment | randaugment | augmix (torchvision's policies), shift (colour,\n"
                        "blur, resolution, JPEG: what weather or another camera does)")
    p.add_argument("--mix-prob", type=float, help="share of batches that are mixed")
    p.add_argument("--mix-alpha", type=float, help="the mixed share is drawn from Beta(alpha, alpha)")
    p.add_argument("--branch-mid", type=int)
    p.add_argument("--branch-out", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="fp16 on CUDA, bf16 on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction)
    p.add_argument("--seed", type=int)
    p.add_argument("--trial", help="run name inside ARTIFACTS/<paradigm>/ (exp1, exp2, ...)")
    p.add_argument("--artifacts", help="the folder of training runs; this run writes ARTIFACTS/<paradigm>/<trial>/")
    renamed_flag(p, "--output-dir", "--artifacts")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int)
    p.add_argument("--threads", type=int,
                   help="torch threads for this run; 0: torch's default, every core (run/train_trials.sh sets it "
                        "to each run's share of the cores)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue: no value = last.pt of this run folder, or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="clear a run folder that holds an earlier run's files, then train afresh (without it such a "
                        "folder is refused, so that no folder mixes two runs' files; --resume continues it)")
    p.add_argument("--keep-epochs", action="store_true", help="also keep epoch_N.pt for every epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    show_defaults(p)
    return p


def show_defaults(p: argparse.ArgumentParser) -> None:
    """Flags left unset are filled by the profile (or DEFAULTS): say which value each one gets."""
    for action in p._actions:
        values = {name: {**DEFAULTS, **prof}[action.dest] for name, prof in PROFILES.items()
                  if action.dest in {**DEFAULTS, **prof}}
        if not values or action.help == argparse.SUPPRESS:
            continue
        distinct = {str(v) for v in values.values()}
        shown = distinct.pop() if len(distinct) == 1 else ", ".join(f"{k} {v}" for k, v in values.items())
        action.help = f"{action.help or ''} (default: {shown})".strip()


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.profile == "auto":
        args.profile = "paper" if torch.cuda.is_available() and args.device in (None, "auto", "cuda") else "quick"
    for key, value in {**DEFAULTS, **PROFILES[args.profile]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.crop > args.resize:
        raise SystemExit(f"error: --crop {args.crop} is larger than --resize {args.resize}")
    try:
        Mixer(args.mix, args.mix_prob, args.mix_alpha)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return args


def load_data(spec, paradigm, args, world: int):
    def items(split):
        return [(p, paradigm.targets(c)) for p, c in spec.split_samples(split, list(paradigm.classes))]
    train = ImageSet(items("train"), train_transform(args.resize, args.crop, args.augment))
    val = ImageSet(items("val"), eval_transform(args.resize, args.crop))
    sampler = DistributedSampler(train, seed=args.seed) if world > 1 else None
    loader_gen = torch.Generator()
    common = dict(batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_skip_bad,
                  persistent_workers=False, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train, shuffle=sampler is None, sampler=sampler, generator=loader_gen,
                              drop_last=len(train) > args.batch_size, **common)
    val_loader = DataLoader(val, shuffle=False, **common)
    return train_loader, val_loader, loader_gen, sampler


def plan_budget(args, spec, train_loader, world: int) -> tuple[int, int | None]:
    """(epochs to run, total training batches or None).

    budget=epochs (the paper's protocol): --epochs passes over this paradigm's own data.
    budget=steps: every paradigm gets the number of batches the efficiency-centric model takes in
    --epochs over the whole train split (all classes), so a 2-class task model is not compared
    after seeing a fraction of the updates; the last epoch is cut where the budget ends."""
    if args.budget == "epochs":
        return args.epochs, None
    per_rank = math.ceil(len(spec.split_samples("train")) / world)
    reference = per_rank // args.batch_size if per_rank > args.batch_size else 1  # drop_last as load_data
    total = args.epochs * reference
    return math.ceil(total / len(train_loader)), total


def build_training(args, paradigm, device, epochs: int, total_batches: int | None):
    """(model, optimizer, scheduler, scaler) of the paper: SGD with momentum, backbone at lr/10,
    cosine annealing over the epochs (per epoch), or over the batches under a step budget."""
    model = build_model(args.backbone, paradigm, args.pretrained, args.branch_mid, args.branch_out,
                        args.hidden).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.param_groups(args.lr), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    if total_batches is None:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(total_batches))
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    return model, optimizer, scheduler, scaler


def log_skipped(run_dir: Path, epoch: int, skipped: list[str]) -> None:
    if skipped:
        with open(run_dir / "skipped.txt", "a") as f:
            f.writelines(f"epoch {epoch}: {m}\n" for m in skipped)
        print(f"skipped {len(skipped)} unreadable image(s) in epoch {epoch}; listed in "
              f"{run_dir / 'skipped.txt'}", file=sys.stderr)


def claim_run_folder(run_dir: Path, args) -> None:
    """A fresh run starts in an empty run folder, so that no folder mixes two runs' files (an old
    best.pt beside a new args.yaml): one that holds files is refused unless --resume continues it
    or --overwrite clears it first."""
    if args.resume and args.overwrite:
        raise SystemExit("error: give --resume (continue the run in its folder) or --overwrite (clear it and "
                         "train afresh), not both")
    # a lone args.yaml (a run that stopped before its first epoch was saved) is rewritten whole
    held = sorted(p.name for p in run_dir.iterdir() if p.name != "args.yaml") if run_dir.is_dir() else []
    if not held or args.resume:
        return
    if not args.overwrite:
        raise SystemExit(f"error: run folder {run_dir} already holds an earlier run ({', '.join(held[:4])}"
                         f"{', ...' if len(held) > 4 else ''}); continue it with --resume, train into another "
                         f"--trial or --artifacts, or clear it with --overwrite")
    shutil.rmtree(run_dir)
    print(f"--overwrite: cleared {run_dir} ({len(held)} files or folders of an earlier run)", flush=True)


def check_finite(epoch: int, val: dict, model) -> None:
    """Divergence, before anything of the epoch is saved, when its validation loss or a weight or
    BatchNorm statistic is NaN or infinite: the training loss can stay finite while they are not."""
    bad = [f"val loss {val['val_loss']}"] if not math.isfinite(val["val_loss"]) else []
    bad += [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()][:3]
    if bad:
        raise Divergence(f"training diverged in epoch {epoch}: {', '.join(bad)} not finite; nothing of this epoch "
                         f"was saved (try a lower --lr or --no-amp, and check the --pretrained weights)")


SELECTION = "highest val accuracy; ties broken by lower val loss; never a non-finite val loss"


def better(val: dict, best: dict | None) -> bool:
    """Model selection (SELECTION): does this epoch's validation beat the best so far?"""
    if not math.isfinite(val["val_loss"]):
        return False
    if best is None:
        return True
    return val["val_acc"] > best["acc"] or (val["val_acc"] == best["acc"] and val["val_loss"] < best["loss"])


def peak_memory(device: torch.device) -> str:
    """', peak GPU memory N MiB' on CUDA (what the run has held at most since it began), else ''."""
    if device.type != "cuda":
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2 ** 20:.0f} MiB"


def end_epoch(args, epoch: int, lr: float, stats: dict, model, paradigm, spec, val_loader, device, run_dir: Path,
              best: dict | None, training) -> dict | None:
    """Validate (val split, never test), log the epoch to summary.csv, write last.pt and, when the
    model is better by SELECTION, best.pt. Returns the best {acc, loss} so far."""
    val = evaluate(model, paradigm, val_loader, device, amp=args.amp, channels_last=args.channels_last,
                   progress=not args.no_progress)
    log_skipped(run_dir, epoch, stats.pop("skipped") + val.pop("val_skipped"))
    check_finite(epoch, val, model)
    improved = better(val, best)
    best = {"acc": val["val_acc"], "loss": val["val_loss"]} if improved else best
    # Crash-consistent order: best.pt, the summary row, then last.pt (the commit point). Killed
    # before last.pt is replaced, --resume re-runs this epoch (deterministically: the same best.pt
    # again) and first cuts the summary back to it, so no row is doubled or missing.
    state = checkpoint.training_state(model, paradigm, spec, args, *training, epoch, val, best, SELECTION)
    if improved:
        checkpoint.save(state, run_dir / "best.pt")
    if args.keep_epochs:
        checkpoint.save(state, run_dir / f"epoch_{epoch}.pt")
    row = {"epoch": epoch, "lr": lr, **stats, **val, "best": improved}
    append_summary(run_dir, {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
    checkpoint.save(state, run_dir / "last.pt")
    print(f"epoch {epoch}/{args.epochs_run}: train loss {stats['train_loss']:.4f} "
          f"({stats['train_images_per_s']:.1f} img/s), val loss {val['val_loss']:.4f}, "
          f"val acc {val['val_acc']:.4f}{' *' if improved else ''}{peak_memory(device)}", flush=True)
    return best


def main(args: argparse.Namespace) -> Path:
    args = resolve_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()  # recorded in args.yaml: what the run's timings were measured with
    rank, local_rank, world = init_distributed()
    device = resolve_device(args.device, local_rank)
    spec = load_spec(args.data)
    paradigm = build_paradigm(args.paradigm, spec, args.task)
    run_dir = Path(args.artifacts) / paradigm.run_name / args.trial
    main_proc = rank == 0
    if main_proc:  # before anything is written: a fresh run never lands among an earlier run's files
        claim_run_folder(run_dir, args)
    if main_proc:
        print(f"profile {args.profile}: {args.backbone} (pretrained {args.pretrained}), "
              f"{args.resize}->{args.crop}px, {args.epochs} epochs, batch {args.batch_size}, device {device}"
              f"{f' x{world}' if world > 1 else ''}; run folder {run_dir}", flush=True)
    seed_everything(args.seed)
    train_loader, val_loader, loader_gen, sampler = load_data(spec, paradigm, args, world)
    epochs, total_batches = plan_budget(args, spec, train_loader, world)
    args.epochs_run, args.budget_batches = epochs, total_batches  # recorded in args.yaml and checkpoints
    if main_proc and total_batches is not None:
        print(f"budget steps: {total_batches} batches ({epochs} epochs of {len(train_loader)})", flush=True)
    model, optimizer, scheduler, scaler = build_training(args, paradigm, device, epochs, total_batches)
    start, best = 1, None
    if args.resume:
        path = run_dir / "last.pt" if args.resume == "auto" else Path(args.resume)
        start, best = checkpoint.restore_training(checkpoint.read(path), path, paradigm, spec, model, optimizer,
                                                  scheduler, scaler)
        if main_proc:
            print(f"resumed from {path} at epoch {start - 1}", flush=True)
    if main_proc:  # summary.csv keeps the epochs before `start` alone: a fresh run over an old folder keeps none
        truncate_summary(run_dir, start)
    net = model
    if world > 1:
        # Each granularity step uses a different part of the network.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None, find_unused_parameters=True)
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The flags, then what ran them (commit, packages, CPU, threads, device): provenance.py.
        (run_dir / "args.yaml").write_text(yaml.safe_dump({**plain(vars(args)), "provenance": provenance(
            device, args.threads)}, sort_keys=False))
    jigsaw_gen = torch.Generator()
    mixer = Mixer(args.mix, args.mix_prob, args.mix_alpha)
    for epoch in range(start, epochs + 1):
        # Every random stream is re-seeded from (seed, epoch): a resumed run draws exactly what an
        # uninterrupted one would have drawn.
        torch.manual_seed(args.seed * 100_003 + epoch * 1_009 + rank)
        loader_gen.manual_seed(args.seed * 100_003 + epoch)
        jigsaw_gen.manual_seed(args.seed * 100_003 + epoch + 7)
        if sampler is not None:
            sampler.set_epoch(epoch)
        lr = optimizer.param_groups[-1]["lr"]
        stats = train_one_epoch(net, paradigm, train_loader, optimizer, device, jigsaw_gen, epoch,
                                granularities=tuple(args.granularities), scaler=scaler, amp=args.amp,
                                channels_last=args.channels_last, progress=main_proc and not args.no_progress,
                                zero_grad=args.zero_grad, permutation=args.jigsaw, method=args.method, mix=mixer,
                                bn_stats=args.bn_stats,
                                max_batches=None if total_batches is None else
                                total_batches - (epoch - 1) * len(train_loader),
                                on_batch=None if total_batches is None else scheduler.step)
        if total_batches is None:
            scheduler.step()
        if not main_proc:
            continue
        best = end_epoch(args, epoch, lr, stats, model, paradigm, spec, val_loader, device, run_dir, best,
                         (optimizer, scheduler, scaler))
    if world > 1:
        torch.distributed.destroy_process_group()
    if main_proc and (run_dir / "best.pt").is_file():
        cal = calibration.calibrate_checkpoint(run_dir / "best.pt", spec, device, args.batch_size, args.workers,
                                               progress=not args.no_progress)
        print(f"calibration of best.pt on val: {calibration.describe(cal)}, val ECE "
              f"{cal['val']['before']['ece']:.4f} -> {cal['val']['after']['ece']:.4f}", flush=True)
    return run_dir


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except (SpecError, CheckpointError, WeightsError, Divergence) as e:
        sys.exit(f"error: {e}")
