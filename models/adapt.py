"""Test-time adaptation of BatchNorm statistics ("BN adapt", Schneider et al., NeurIPS 2020).

A shifted image set (snow, rain, another camera) moves the activations' mean and variance away from
the running statistics learned in training. BN adapt re-estimates every BatchNorm layer's statistics
on the set itself (one pass, no labels, no gradient; the learned weights stay) and predicts with
them. The gain it gives measures how much of an accuracy loss under shift is a statistics shift,
and it is deployable for a day's batch: adapt on the day's images, then predict them. The statistics
are taken from at most `MAX_IMAGES` of them, spread evenly over the set (per channel they are means
over every pixel of every image: a few hundred images fix them), so a large set costs one pass to
predict plus a bounded one to adapt.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from models.inference import batches

MAX_IMAGES = 512


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def bn_adapted(model: nn.Module, items: list, transform, batch_size: int = 32, device="cpu", desc: str = "adapt",
               progress: bool = True, workers: int = 0, max_images: int = MAX_IMAGES) -> nn.Module:
    """A copy of `model` whose BatchNorm statistics are the cumulative average over the batches of
    `items`, or of `max_images` of them evenly spread when there are more (a last batch of one image
    is left out: a 1-D BatchNorm cannot take a variance from one value). ValueError when the model
    has no BatchNorm or fewer than two images can be read."""
    if len(items) > max_images >= 2:
        items = [items[i] for i in sorted({round(k * (len(items) - 1) / (max_images - 1)) for k in range(max_images)})]
    adapted = copy.deepcopy(model).eval()
    norms = batchnorms(adapted)
    if not norms:
        raise ValueError("the model has no BatchNorm layer to adapt")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    seen = 0
    for images, _ in batches(items, transform, batch_size, workers, desc, progress):
        if len(images) > 1:
            adapted(images.to(device))
            seen += len(images)
    if not seen:
        raise ValueError(f"{desc}: BN adapt needs a batch of at least two readable images")
    return adapted.eval()
