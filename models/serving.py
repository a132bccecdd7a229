"""The graph a release bundle serves: BatchNorm folded into the layers beside it, exported to ONNX
with two outputs, the logits and the hidden features (`export_onnx`; models/release.py checks the
round trip, pipeline/model.py runs it on ONNX Runtime).

Serving never trains, so a BatchNorm in eval mode is a fixed per-channel affine map `s * x + t`
(s = gamma / sqrt(var + eps), t = beta - mean * s). Folded into the convolution or Linear layer
that feeds it (or, for a BatchNorm1d right before a Linear, into that Linear's input side), it
costs nothing at run time; in exact arithmetic the outputs are unchanged, in fp32 they agree to
rounding (checked on every fold: `fold_batchnorm` compares the folded model with the original on
a probe batch and refuses a fold that changes the logits).

Which layer feeds which is read from one traced forward pass (forward hooks on the leaf
modules), so it works for any backbone built from modules (ResNet's blocks call their BN from
Python code, EfficientNet's convolutions are Conv2d subclasses) without knowing its code.

    folded = fold_batchnorm(ckpt.model, probe)            # a copy; refuses a fold that moves the logits
    graph = export_onnx(ckpt.model, ckpt.crop, "dynamo")  # bytes of model.onnx: images -> logits, features
"""
from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from utils import replace_module

def _affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of the eval-mode BN as float64: bn(x) = s * x + t per channel."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    s = 1.0 / torch.sqrt(var + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    return gamma * s, beta - mean * gamma * s


def _set_bias(layer: nn.Module, bias: torch.Tensor) -> None:
    ref = layer.weight
    value = bias.to(ref.dtype).to(ref.device)
    if layer.bias is None:
        layer.bias = nn.Parameter(value, requires_grad=False)
    else:
        layer.bias.data.copy_(value)


@torch.no_grad()
def _fold_after(layer: nn.Module, bn) -> None:
    """layer (Conv2d or Linear) followed by bn: out = s * (W x + b) + t."""
    s, t = _affine(bn)
    w = layer.weight.double()
    b = layer.bias.double() if layer.bias is not None else torch.zeros_like(s)
    shape = (-1,) + (1,) * (w.dim() - 1)
    layer.weight.data.copy_((w * s.view(shape)).to(layer.weight.dtype))
    _set_bias(layer, b * s + t)


@torch.no_grad()
def _fold_before(bn, linear: nn.Linear) -> None:
    """bn followed by linear: W (s x + t) + b = (W diag s) x + (W t + b)."""
    s, t = _affine(bn)
    w = linear.weight.double()
    b = linear.bias.double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    linear.weight.data.copy_((w * s.view(1, -1)).to(linear.weight.dtype))
    _set_bias(linear, w @ t + b)


def _pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str, str]]:
    """(kind, producer name, consumer name) of every foldable pair seen in one forward pass.

    kind "after": a Conv2d/Linear whose output goes straight into a BatchNorm; "before": a
    BatchNorm1d whose output goes straight into a Linear. "Straight" means the consumer's input is
    the very tensor the producer returned and no other module wrote it in between (an in-place
    ReLU/ELU re-registers the tensor as its own output)."""
    producer: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # holds every recorded tensor, so that no id is reused in the pass
    inputs: dict[str, list[str | None]] = {}
    outputs_used: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(module, args, out):
        name = names[module]
        src = producer.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        inputs.setdefault(name, []).append(src)
        if src is not None:
            outputs_used[src] = outputs_used.get(src, 0) + 1
        if isinstance(out, torch.Tensor):
            producer[id(out)] = name
            keep.append(out)

    for m in model.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    calls = {n: len(v) for n, v in inputs.items()}
    found = []
    for name, srcs in inputs.items():
        if len(srcs) != 1 or srcs[0] is None or calls.get(srcs[0]) != 1 or outputs_used.get(srcs[0]) != 1:
            continue
        src, m, p = srcs[0], mods[name], mods[srcs[0]]
        usable_bn = lambda bn: bn.track_running_stats and bn.running_var is not None  # noqa: E731
        if isinstance(m, nn.BatchNorm2d) and isinstance(p, nn.Conv2d) and usable_bn(m):
            found.append(("after", src, name))
        elif isinstance(m, nn.BatchNorm1d) and isinstance(p, nn.Linear) and usable_bn(m):
            found.append(("after", src, name))
        elif isinstance(m, nn.Linear) and isinstance(p, nn.BatchNorm1d) and usable_bn(p):
            found.append(("before", src, name))
    return found


def fold_batchnorm(model: nn.Module, probe: torch.Tensor, atol: float = 1e-3) -> nn.Module:
    """An eval-mode copy of `model` with every foldable BatchNorm folded into its neighbour and
    replaced by Identity. `probe` is an input batch (batch >= 2: BatchNorm1d in the graph) used to
    trace which layer feeds which and to check the result: ValueError if the folded model's
    outputs differ from the original's by more than `atol`."""
    original = model.eval()
    model = copy.deepcopy(model)
    pairs = _pairs(model, probe)
    mods = dict(model.named_modules())
    folded_bn = set()
    # "after" folds first: a Linear may take a BN on both sides (BN1d -> Linear -> BN1d).
    for kind, src, dst in sorted(pairs, key=lambda p: p[0] != "after"):
        if kind == "after":
            _fold_after(mods[src], mods[dst])
            folded_bn.add(dst)
        else:
            _fold_before(mods[src], mods[dst])
            folded_bn.add(src)
    for name in folded_bn:
        replace_module(model, name, nn.Identity())
    for p in model.parameters():
        p.requires_grad_(False)
    check(model, original, probe, atol)
    return model


def check(folded: nn.Module, reference: nn.Module, probe: torch.Tensor, atol: float) -> float:
    """Largest |logit difference| between `folded` and `reference` on `probe`; ValueError when it
    exceeds atol or is not finite."""
    with torch.inference_mode():
        diff = (_logits(folded(probe)) - _logits(reference(probe))).abs().max().item()
    if not diff <= atol:
        raise ValueError(f"folding BatchNorm changed the logits by {diff:.2e} (> {atol:g})")
    return diff


def _logits(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class Features(nn.Module):
    """model(x) -> (logits, features): the interface every backend serves (PMG's features=True)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return tuple(self.model(x, features=True))


EXPORTERS = ("dynamo", "torchscript")
# dynamo translates from opset 18 on; the TorchScript exporter keeps the opset it has always served with.
OPSETS = {"dynamo": 18, "torchscript": 17}


def export_onnx(model: nn.Module, crop: int, exporter: str = "torchscript") -> bytes:
    """The serialized ONNX graph of Features(model) (BN folded first) for (N, 3, crop, crop) input,
    N dynamic; inputs `images`, outputs `logits` and `features`. `exporter`: "dynamo" (torch.export,
    the current exporter; needs the onnxscript package) or "torchscript" (dynamo=False: deprecated,
    needs only onnx, and exports this model's plain conv/pool/linear graph directly). Both give
    the same bytes for the same model and torch, so a release of one checkpoint has one id."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown ONNX exporter '{exporter}'; choose one of {', '.join(EXPORTERS)}")
    probe = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    net = Features(fold_batchnorm(model.cpu().eval(), probe)).eval()
    names = {"input_names": ["images"], "output_names": ["logits", "features"], "opset_version": OPSETS[exporter]}
    if exporter == "dynamo":
        # min=1: the probe's batch of 2 must not specialise the graph to batches of 2 or more.
        with torch.no_grad():
            program = torch.onnx.export(net, (probe,), dynamo=True, verbose=False,
                                        dynamic_shapes={"x": {0: torch.export.Dim("n", min=1)}}, **names)
        return program.model_proto.SerializeToString()
    buf = io.BytesIO()
    # The input side is fixed (crop): size arithmetic traced as constants is what we want.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (probe,), buf, dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}, "features": {0: "n"}},
                          dynamo=False, **names)
    return buf.getvalue()
