"""Grow a trained model to a dataset with a new class, without retraining from scratch.

The dataset is the model's training data plus the new task (`python -m data.concat add`).
1. Grow: the model of the same paradigm on the new spec is built, every weight of the parent is
   copied, and the heads grow by name: a row of an old class is copied bit for bit (so before any
   fine-tuning every old logit is unchanged); a new class's row is imprinted (Qi et al. 2018) in
   each of PMG's four classifiers from that classifier's hidden features (the input of its heads,
   whole images, eval transform): the mean of the new class's L2-normalised train features,
   normalised and scaled to the mean norm of the head's old rows; its bias is the mean of the old
   biases. A new binary (sigmoid) head gets w = r (u_pos - u_neg) / |u_pos - u_neg| (u: normalised
   class means, r: the mean norm of the old binary heads' rows) and the bias that puts the
   decision boundary half-way between the two classes' mean features.
2. Fine-tune: a short budget of batches of the parent's own training step (engine.train_one_epoch
   with its method, jigsaw, zero_grad, BN statistics, mixing and memory format) under one cosine
   schedule, by default `share` = FULL_SHARE (a fifth) of the batches a full retrain with the parent's flags
   would run on the new dataset; every batch holds round(replay x batch) old-class training images
   drawn uniformly from all of them (without replacement until all were drawn) and the rest from
   the new class (`ReplayBatches`); replay 0 is the naive baseline (new class only).
   `train`: heads (the heads' Linear layers; every BatchNorm stays frozen), classifier (the four
   classifiers: trunk and heads) or all (backbone at lr/10, as train.py).
3. Write a normal checkpoint (models.checkpoint) with `parent` and `added`, validated on the val
   split; extend.py then releases it (models/release.py: its OOD filter, thresholds and ONNX graph).
A task-centric model is not grown: the task-centric way adds one more model (train.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from data.images import content_hash
from data.loading import ImageSet, collate_skip_bad, eval_transform, train_transform
from data.spec import Spec
from engine import cosine, evaluate, train_one_epoch, training_steps
from models import build_model, build_paradigm
from models import checkpoint as checkpoints
from models.detectors import l2_normalise
from models.mixing import Mixer
from models.paradigms import Head, Paradigm
from models.pmg import CONCAT
from utils import resolve_device

TRAIN = ("heads", "classifier", "all")
FULL_SHARE = 0.2  # default budget: this share of the batches a full retrain with the parent's flags would run
SELECTION = "the fine-tuned model after the step budget (extend.py: no selection)"


class ExtendError(ValueError):
    """An extension that cannot be made; the message names the file and the fix."""


@dataclass
class Options:
    steps: int | None = None  # batches (each = 4 optimizer steps for PMG); None: `epochs`, else `share`
    share: float = FULL_SHARE  # of the batches a full retrain with the parent's flags would run
    epochs: float | None = None  # passes over the new class's train images at its share of a batch
    lr: float = 2e-3  # the parent's new-layer lr; the backbone gets lr/10
    # the four classifiers (backbone frozen): the highest mean val accuracy of heads / classifier / all
    # over 3 trials of run/extend.sh (0.915 v 0.908 / 0.875), at a third of all's training time
    train: str = "classifier"
    replay: float = 0.75  # share of every batch drawn from the old classes' training images
    batch_size: int = 16
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # cuda when visible, else cpu
    progress: bool = True


# --- growing the heads ------------------------------------------------------------------------

def new_classes(parent: Paradigm, spec: Spec, where: Path) -> list[str]:
    """The spec's classes the parent lacks; ExtendError when it lacks a parent class or adds none."""
    missing = [c for c in parent.classes if c not in spec.classes]
    if missing:
        raise ExtendError(f"{spec.file}: lacks class(es) {', '.join(missing)} that {where} was trained on; extend "
                          f"with its training data plus the new task (python -m data.concat add --dataset ... "
                          f"--task-data ... --out ...)")
    added = [c for c in spec.classes if c not in parent.classes]
    if not added:
        raise ExtendError(f"{spec.file}: no class that {where} lacks (it has {', '.join(parent.classes)}): nothing "
                          f"to add; add the new task's data first (python -m data.concat add)")
    return added


def hidden(model, x: torch.Tensor, step: int) -> torch.Tensor:
    """The hidden features of classifier `step` (the input of its heads' Linear layers)."""
    if step == CONCAT:
        return model(x, features=True)[1]
    return model.classifiers[step].trunk(model.branches[step](model.backbone(x, upto=step)[step]))


@torch.no_grad()
def class_means(model, items, transform, batch_size: int, device) -> dict[str, list[tuple]]:
    """class -> per classifier (mean of the L2-normalised hidden features, mean of the raw ones)."""
    model.eval()
    loader = DataLoader(ImageSet([(p, i) for i, (p, _) in enumerate(items)], transform), batch_size=batch_size,
                        collate_fn=collate_skip_bad)
    feats, labels = [[] for _ in range(CONCAT + 1)], []
    for images, idx, _ in loader:
        if images is None:
            continue
        for k, f in enumerate(feats):
            f.append(hidden(model, images.to(device), k).double().cpu())
        labels += [items[i][1] for i in idx.tolist()]
    if not labels:
        raise ExtendError(f"none of the {len(items)} train images of {sorted({c for _, c in items})} could be read")
    feats = [torch.cat(f) for f in feats]
    masks = {c: torch.tensor([lab == c for lab in labels]) for c in dict.fromkeys(labels)}
    return {c: [(l2_normalise(f[m]).mean(0), f[m].mean(0)) for f in feats] for c, m in masks.items()}


def imprint_row(u: torch.Tensor, norm: float) -> torch.Tensor:
    """The normalised class mean `u`, scaled to `norm`."""
    return norm * u / u.norm().clamp(min=1e-12)


def grow_head(old: torch.nn.Linear | None, old_head: Head | None, head: Head, means: dict, k: int,
              binary_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of `head` in classifier k: old rows copied, new rows imprinted (module doc)."""
    if old is not None and old_head == head:
        return old.weight.detach().clone(), old.bias.detach().clone()
    if head.kind == "binary":
        (u_neg, m_neg), (u_pos, m_pos) = means[head.classes[0]][k], means[head.classes[1]][k]
        w = imprint_row(u_pos - u_neg, binary_norm)
        return w[None].float(), (-(w @ (m_pos + m_neg)) / 2)[None].float()
    w_old, b_old = old.weight.detach(), old.bias.detach()
    norm = float(w_old.norm(dim=1).mean())
    rows, bias = [], []
    for c in head.classes:
        if c in old_head.classes:
            rows.append(w_old[old_head.classes.index(c)].clone())
            bias.append(b_old[old_head.classes.index(c)].clone())
        else:
            rows.append(imprint_row(means[c][k][0], norm).float())
            bias.append(b_old.mean())
    return torch.stack(rows), torch.stack(bias)


def grow(parent_model, parent: Paradigm, paradigm: Paradigm, args: dict, means: dict):
    """The model of `paradigm` with every weight of `parent_model` and grown heads."""
    old_heads = {h.name: h for h in parent.heads}
    for h in parent.heads:
        new = next((n for n in paradigm.heads if n.name == h.name), None)
        if new is None or new.kind != h.kind or not set(h.classes) <= set(new.classes):
            raise ExtendError(f"the new spec has no head '{h.name}' over {list(h.classes)} (heads: "
                              f"{[n.name for n in paradigm.heads]}); the old heads must stay")
    model = build_model(args["backbone"], paradigm, "none", args["branch_mid"], args["branch_out"], args["hidden"])
    state = {k: v for k, v in parent_model.state_dict().items() if ".heads." not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".heads." in k for k in missing), (missing, unexpected)
    for k, (old_cls, cls) in enumerate(zip(parent_model.classifiers, model.classifiers)):
        rows = [old_cls.heads[h.name].weight.detach() for h in parent.heads if h.kind == "binary"] or \
            [m.weight.detach() for m in old_cls.heads.values()]
        binary_norm = float(torch.cat(rows).norm(dim=1).mean())  # the old binary heads' (else all) rows
        for h in paradigm.heads:
            old = old_cls.heads[h.name] if h.name in old_heads else None
            w, b = grow_head(old, old_heads.get(h.name), h, means, k, binary_norm)
            with torch.no_grad():
                cls.heads[h.name].weight.copy_(w)
                cls.heads[h.name].bias.copy_(b)
    return model


# --- replay --------------------------------------------------------------------------------

class ReplayBatches(Sampler):
    """`batches` batches of dataset indices: the first `n_old` are old-class images, the next `n_new`
    new-class ones; every batch holds round(replay x batch_size) old and the rest new images, each
    stream drawn uniformly without replacement and reshuffled when used up."""

    def __init__(self, n_old: int, n_new: int, batch_size: int, replay: float, batches: int, seed: int = 0):
        self.k_old, self.k_new = batch_split(batch_size, replay, n_old)
        self.n_old, self.n_new, self.batches, self.seed = n_old, n_new, batches, seed

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)

        def stream(n, offset):
            while True:
                yield from (offset + torch.randperm(n, generator=g)).tolist()

        old, new = stream(self.n_old, 0) if self.n_old else iter(()), stream(self.n_new, self.n_old)
        for _ in range(self.batches):
            yield [next(old) for _ in range(self.k_old)] + [next(new) for _ in range(self.k_new)]


def batch_split(batch_size: int, replay: float, n_old: int) -> tuple[int, int]:
    """(old, new) images per batch: round(replay x batch_size) old ones, at least one new one."""
    if not 0 <= replay < 1:
        raise ExtendError(f"--replay {replay}: must be in [0, 1) (the share of old-class images per batch)")
    k_old = round(replay * batch_size) if n_old else 0
    if k_old >= batch_size:
        raise ExtendError(f"--replay {replay} with batch {batch_size} leaves no new-class image in a batch; "
                          f"lower --replay")
    return k_old, batch_size - k_old


def budget(opts: Options, n_new: int, k_new: int, full_batches: int) -> int:
    """Batches to run: --steps, --epochs passes over the new class's images at k_new per batch, or
    `share` of `full_batches` (what a full retrain would run)."""
    if opts.epochs is not None:
        return max(1, math.ceil(opts.epochs * n_new / k_new))
    if opts.steps is None:
        if not 0 < opts.share <= 1:
            raise ExtendError(f"--share {opts.share}: must be in (0, 1] (a share of a full retrain's batches)")
        return max(1, round(opts.share * full_batches))
    if opts.steps < 1:
        raise ExtendError("--steps must be >= 1 (or give --epochs)")
    return opts.steps


def trainable(model, which: str) -> tuple[list[dict], list]:
    """(optimizer groups for `which` (TRAIN), the modules to keep in eval mode): frozen parameters get
    no gradient, and a module whose parameters are all frozen keeps its BatchNorm statistics."""
    if which not in TRAIN:
        raise ExtendError(f"--train {which}: choose one of {', '.join(TRAIN)}")
    keep = {"heads": lambda n: ".heads." in n, "classifier": lambda n: n.startswith("classifiers."),
            "all": lambda n: True}[which]
    for n, p in model.named_parameters():
        p.requires_grad_(keep(n))
    frozen = [m for m in model.modules()
              if (params := list(m.parameters())) and not any(p.requires_grad for p in params)]
    groups = [g | {"params": [p for p in g["params"] if p.requires_grad]} for g in model.param_groups(1.0)
              if any(p.requires_grad for p in g["params"])]
    return groups, frozen


def fine_tune(model, paradigm: Paradigm, spec: Spec, old: list[str], added: list[str], args: dict,
              opts: Options, device) -> dict:
    """The replay fine-tune (module doc); returns its log (batches, optimizer steps, seconds, losses)."""
    items = [(p, paradigm.targets(c)) for p, c in spec.split_samples("train", old)]
    fresh = [(p, paradigm.targets(c)) for p, c in spec.split_samples("train", added)]
    _, k_new = batch_split(opts.batch_size, opts.replay, len(items))
    full = int(args["epochs"]) * max(1, (len(items) + len(fresh)) // int(args["batch_size"]))  # drop_last, as train.py
    sampler = ReplayBatches(len(items), len(fresh), opts.batch_size, opts.replay,
                            budget(opts, len(fresh), k_new, full), opts.seed)
    loader = DataLoader(ImageSet(items + fresh, train_transform(args["resize"], args["crop"], args.get("augment", "paper"))), batch_sampler=sampler,
                        num_workers=opts.workers, collate_fn=collate_skip_bad)
    groups, frozen = trainable(model, opts.train)
    for g in groups:  # param_groups(1.0) gives the relative lr: 1 for new layers, 1/10 for the backbone
        g["lr"] = g["initial_lr"] = g["lr"] * opts.lr
    optimizer = torch.optim.SGD(groups, lr=opts.lr, momentum=args["momentum"], weight_decay=args["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(sampler.batches))
    jigsaw_gen = torch.Generator().manual_seed(opts.seed + 7)
    torch.manual_seed(opts.seed)
    # the parent's own training step (engine.train_one_epoch): its jigsaw, method, zero_grad, BN
    # statistics, mixing, memory format and (on CUDA) AMP
    amp = bool(args.get("amp")) and device.type == "cuda"
    stats = train_one_epoch(model, paradigm, loader, optimizer, device, jigsaw_gen, 1,
                            granularities=tuple(args["granularities"]), amp=amp,
                            scaler=torch.amp.GradScaler("cuda", enabled=amp),
                            channels_last=args.get("channels_last", False),
                            progress=opts.progress, zero_grad=args.get("zero_grad", "none"),
                            permutation=args.get("jigsaw", "cycle"), method=args.get("method", "pmg"),
                            mix=Mixer(args.get("mix", "none"), args.get("mix_prob", 0.5), args.get("mix_alpha", 1.0)),
                            on_batch=scheduler.step, bn_stats=args.get("bn_stats", "step"), frozen=frozen)
    steps_per_batch = len(training_steps(args.get("method", "pmg"), tuple(args["granularities"])))
    for p in model.parameters():
        p.requires_grad_(True)
    return {"batches": stats["train_batches"], "optimizer_steps": stats["train_batches"] * steps_per_batch,
            "seconds": round(stats["train_seconds"], 2), "images": stats["train_images"],
            "old_per_batch": sampler.k_old, "new_per_batch": sampler.k_new, "train_loss": stats["train_loss"],
            "skipped": stats["skipped"], "optimizer": optimizer, "scheduler": scheduler}


def train_task_model(parent, spec: Spec, out_dir: Path) -> Path:
    """The task-centric way (the baseline): one more model, trained by train.py with the parent's
    flags on the spec's new task; its run folder is out_dir/task_<task>/<parent's trial>."""
    import train
    tasks = [t for t in spec.tasks if t not in parent.spec.tasks]
    if not tasks:
        raise ExtendError(f"{spec.file}: no task that {parent.path} does not have; the task-centric way adds a "
                          f"model per new task (python -m data.concat add gives the new class a task)")
    ns = train.get_args_parser().parse_args([])
    for k, v in parent.args.items():
        if hasattr(ns, k):
            setattr(ns, k, v)
    ns.data, ns.paradigm, ns.task, ns.artifacts, ns.resume, ns.no_progress = (str(spec.root), "task", tasks[0],
                                                                              str(out_dir), None, True)
    return train.main(ns) / "best.pt"


# --- the whole extension -------------------------------------------------------------------

def extend(ckpt_path: str | Path, spec: Spec, out_dir: str | Path, opts: Options) -> Path:
    """Grow the model of `ckpt_path` to the classes of `spec`, fine-tune, write out_dir/best.pt."""
    start = time.perf_counter()
    batch_split(opts.batch_size, opts.replay, 1)  # flag errors before any work
    if opts.train not in TRAIN:
        raise ExtendError(f"--train {opts.train}: choose one of {', '.join(TRAIN)}")
    device = resolve_device(opts.device)
    parent = checkpoints.load(ckpt_path, device=device)
    added = new_classes(parent.paradigm if parent.paradigm.name != "task" else build_paradigm("uni", parent.spec),
                        spec, ckpt_path)
    if parent.paradigm.name == "task":
        return train_task_model(parent, spec, Path(out_dir))
    args = dict(parent.args)
    paradigm = build_paradigm(parent.paradigm.name, spec)
    old = [c for c in paradigm.classes if c in parent.paradigm.classes]
    needed = list(dict.fromkeys(added + [h.classes[0] for h in paradigm.heads if h.kind == "binary"
                                         and h not in parent.paradigm.heads]))
    torch.manual_seed(opts.seed)
    means = class_means(parent.model, spec.split_samples("train", needed), eval_transform(args["resize"], args["crop"]),
                        opts.batch_size, device)
    model = grow(parent.model, parent.paradigm, paradigm, args, means).to(device)
    if args.get("channels_last"):  # as train.py trains and evaluates it
        model = model.to(memory_format=torch.channels_last)
    imprint_seconds = time.perf_counter() - start
    log = fine_tune(model, paradigm, spec, old, added, args, opts, device) if opts.steps != 0 else {}
    optimizer, scheduler = log.pop("optimizer", None), log.pop("scheduler", None)
    if optimizer is None:  # --steps 0: the imprinted model as it is
        optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0)
    val_loader = DataLoader(ImageSet([(p, paradigm.targets(c)) for p, c in spec.split_samples("val", list(paradigm.classes))],
                                     eval_transform(args["resize"], args["crop"])),
                            batch_size=opts.batch_size, num_workers=opts.workers, collate_fn=collate_skip_bad)
    val = evaluate(model, paradigm, val_loader, device, channels_last=args.get("channels_last", False),
                   progress=opts.progress)
    val.pop("val_skipped")
    out = Path(out_dir) / "best.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"classes": added, "tasks": {t: list(p) for t, p in spec.tasks.items() if t not in parent.spec.tasks},
              "heads": checkpoints.heads_of(paradigm), "method": "imprint + replay fine-tune",
              "train": opts.train, "replay": opts.replay, "lr": opts.lr, "batch_size": opts.batch_size,
              "share": opts.share if opts.steps is None and opts.epochs is None else None,
              "seed": opts.seed, "imprint_seconds": round(imprint_seconds, 2), **log}
    lineage = {"checkpoint": str(ckpt_path), "sha256": content_hash(ckpt_path), "paradigm": parent.paradigm.name,
               "classes": list(parent.paradigm.classes), "spec_name": parent.spec.name}
    args.pop("output_dir", None)  # the name of "artifacts" in older checkpoints' args
    args.update(data=str(spec.root), artifacts=str(out.parent.parent))
    state = checkpoints.training_state(model, paradigm, spec, args, optimizer, scheduler,
                                       torch.amp.GradScaler("cuda", enabled=False), parent.epoch or 0, val,
                                       {"acc": val["val_acc"], "loss": val["val_loss"]}, SELECTION,
                                       parent=lineage, added=record)
    checkpoints.save(state, out)
    return out
