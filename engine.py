"""The training and validation loops (setup lives in train.py).

One PMG training step on a batch is four optimizer steps: jigsaw n=8 -> loss on output 0,
n=4 -> output 1, n=2 -> output 2, the whole image -> concat output with loss x2. Each pass
computes only what its loss uses (`model(x, step=k)`); `naive=True` runs the whole network in
every pass as the paper's code does (same loss and gradients, more compute) for the benchmark.

`zero_grad`: "zeros" is PyTorch 1.x's `zero_grad()` (the paper's code ran on it): gradients are
filled with zeros, so in every one of the four steps every parameter that has had a gradient
receives its weight decay and momentum update, also the parts the step's loss does not reach
(with step-skipping too: their gradient is a zero tensor, as in the full forward). "none" is
PyTorch 2's default: those parameters are left alone in that step.

A non-finite loss stops training at once (`Divergence`, naming the epoch and step): a NaN model
must never be selected or written as best. (GradScaler's skipped fp16 steps come from
non-finite gradients, not losses, and do not trip it.)
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
from tqdm import tqdm

from models.jigsaw import jigsaw
from models.mixing import Mixer
from models.pmg import CONCAT

NO_MIX = Mixer()


def autocast(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    # fp16 + GradScaler on CUDA; bf16 on CPU (no scaler needed, range of fp32).
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


ZERO_GRAD = ("zeros", "none")
METHODS = ("pmg", "plain")


def training_steps(method: str, granularities=(8, 4, 2)) -> list[tuple[int, int, float]]:
    """(output, jigsaw n, loss weight) of each optimizer step on a batch.

    pmg: the paper's progressive steps, then the whole image on the concat output with loss x2;
    plain: plain fine-tuning of the same network and heads, one step per batch on the whole image
    (loss x1: the x2 of PMG balances its three jigsaw steps)."""
    if method == "plain":
        return [(CONCAT, 1, 1.0)]
    if method != "pmg":
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return [(k, n, 1.0) for k, n in enumerate(granularities)] + [(CONCAT, 1, 2.0)]


def cosine(total: int):
    """lr factor after t steps of `total`: 1 at the start, 0 after the last step."""
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))


class Divergence(RuntimeError):
    """A non-finite training loss; the message names where and what to try."""


def pmg_step(model, paradigm, images, targets, optimizer, generator, granularities=(8, 4, 2),
             scaler=None, amp=False, naive=False, zero_grad="none", permutation="cycle",
             method="pmg", mix: Mixer = NO_MIX, bn_stats="step") -> list[float]:
    """The optimizer steps of one batch (four for PMG, one for plain); returns their losses.
    `mix` mixes the batch once, before the jigsaw, for all its steps (models/mixing.py);
    `bn_stats` "all": every BN layer updates its running statistics in every step (models/pmg.py)."""
    losses = []
    mixed = mix(images, targets, generator)
    for k, n, weight in training_steps(method, granularities):
        optimizer.zero_grad(set_to_none=zero_grad == "none")
        x = jigsaw(mixed.images, n, generator, permutation) if k != CONCAT else mixed.images
        with autocast(images.device, amp):
            logits = model.forward_all(x)[k] if naive else model(x, step=k, bn_stats=bn_stats)
        loss = mixed.loss(paradigm, logits, targets) * weight
        if not torch.isfinite(loss):
            raise Divergence(f"granularity step {k} (jigsaw n={n}) gave loss {loss.item()}")
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.item())
    return losses


def train_one_epoch(model, paradigm, loader, optimizer, device, generator, epoch, *, granularities=(8, 4, 2),
                    scaler=None, amp=False, channels_last=False, naive=False, progress=True, zero_grad="none",
                    permutation="cycle", method="pmg", mix: Mixer = NO_MIX, max_batches=None,
                    on_batch=None, bn_stats="step", frozen=()) -> dict:
    """One pass over the loader (or its first `max_batches` batches: the step budget's last epoch);
    `on_batch()` runs after every batch (a per-batch schedule); the modules in `frozen` stay in eval
    mode (their BatchNorm statistics do not move)."""
    model.train()
    for m in frozen:
        m.eval()
    total, seen, batches, skipped, start = 0.0, 0, 0, [], time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, disable=not progress,
               total=min(len(loader), max_batches) if max_batches is not None else None)
    for batch, (images, targets, bad) in enumerate(bar, 1):
        if max_batches is not None and batch > max_batches:
            break
        batches += 1
        skipped += [message for _, message in bad]
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        try:
            losses = pmg_step(model, paradigm, images, targets, optimizer, generator, granularities,
                              scaler, amp, naive, zero_grad, permutation, method, mix, bn_stats)
        except Divergence as e:
            raise Divergence(f"training diverged in epoch {epoch}, batch {batch}: {e}; nothing of this epoch was "
                             f"saved (try a lower --lr, or --no-amp)") from None
        total += sum(losses) * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{sum(losses):.3f}")
        if on_batch is not None:
            on_batch()
    seconds = time.perf_counter() - start
    return {"train_loss": total / max(seen, 1), "train_images": seen, "train_batches": batches, "train_seconds": seconds,
            "train_images_per_s": seen / max(seconds, 1e-9), "skipped": skipped}


@torch.no_grad()
def evaluate(model, paradigm, loader, device, *, amp=False, channels_last=False, progress=True,
             desc="val") -> dict:
    """Loss and accuracy of the concat output; for several heads, accuracy per head and their mean."""
    model.eval()
    loss, n, right, seen, skipped = 0.0, 0, 0, 0, []
    for images, targets, bad in tqdm(loader, desc=desc, leave=False, disable=not progress):
        skipped += [message for _, message in bad]
        if images is None:
            continue
        images, targets = images.to(device), targets.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        loss += paradigm.loss(logits.float(), targets).item() * len(images)
        n += len(images)
        r, s = paradigm.correct(logits, targets)
        right, seen = right + r.cpu(), seen + s.cpu()
    per_head = (right / seen.clamp(min=1)).tolist() if n else []
    out = {"val_loss": loss / max(n, 1), "val_acc": sum(per_head) / max(len(per_head), 1), "val_images": n,
           "val_skipped": skipped}
    if len(paradigm.heads) > 1:
        out.update({f"val_acc_{h.name}": a for h, a in zip(paradigm.heads, per_head)})
    return out
