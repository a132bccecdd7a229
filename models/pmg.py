"""PMG: Progressive Multi-Granularity training of jigsaw patches (Du et al., ECCV 2020).

Branch i on backbone stage i: 1x1 conv -> `branch_mid`, 3x3 conv -> `branch_out` (Conv+BN+ReLU),
global max pool (adaptive, so any input size works; at 448 it equals the original's fixed
56/28/14 pools). Classifier i: BN1d -> Linear -> BN1d -> ELU -> heads; the concat classifier sees
all three pooled branches. Heads are registered modules (one Linear per head of the paradigm),
so every head is saved and restored with the state_dict.

`forward(x, CONCAT, features=True)` also returns the concat classifier's hidden layer after ELU
(`hidden` wide), from the same pass: the input of the heads' Linear layers, i.e. the penultimate
layer that feature-space OOD detectors (KNN, Mahalanobis; models/detectors.py) are defined on.
It is chosen over the pooled branches (3 x `branch_out` wide) because it is the space in which the
classes are linearly separated, as the Gaussian-discriminant view of Mahalanobis assumes; it is
one space shared by every head (multi-task included); and it is 6x narrower at paper widths (512 v
3072), so a tied covariance is better conditioned and a KNN bank is smaller.
"""
from __future__ import annotations

import torch
from torch import nn

from models.backbones import Backbone

CONCAT = 3  # the step index of the concatenated-granularity output
# BatchNorm running statistics in a step-skipping training step: "step" updates only the layers the
# step's output uses; "all" also runs the rest forward (no_grad) for its statistics, as the
# reference's full forward does
BN_STATS = ("step", "all")


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Classifier(nn.Module):
    def __init__(self, cin: int, hidden: int, head_sizes: dict[str, int]):
        super().__init__()
        self.trunk = nn.Sequential(nn.BatchNorm1d(cin), nn.Linear(cin, hidden),
                                   nn.BatchNorm1d(hidden), nn.ELU(inplace=True))
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in head_sizes.items()})

    def forward(self, x: torch.Tensor, features: bool = False):
        h = self.trunk(x)
        logits = torch.cat([head(h) for head in self.heads.values()], dim=1)
        return (logits, h) if features else logits


class PMG(nn.Module):
    """`forward(x, step)` returns the logits of one granularity step: 0, 1, 2 (branches on
    stages 0..2) or CONCAT. A step computes only what its output needs: step 0 runs stage 0 of the
    backbone and branch 0, nothing else. `features=True` (CONCAT only) returns (logits, hidden
    features) of the same pass (module doc)."""

    def __init__(self, backbone: Backbone, head_sizes: dict[str, int],
                 branch_mid: int = 512, branch_out: int = 1024, hidden: int = 512):
        super().__init__()
        self.backbone = backbone
        self.branches = nn.ModuleList(
            nn.Sequential(conv_bn_relu(c, branch_mid, 1), conv_bn_relu(branch_mid, branch_out, 3),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten())
            for c in backbone.channels)
        self.classifiers = nn.ModuleList(Classifier(branch_out, hidden, head_sizes) for _ in range(3))
        self.classifiers.append(Classifier(3 * branch_out, hidden, head_sizes))

    def forward(self, x: torch.Tensor, step: int = CONCAT, features: bool = False, bn_stats: str = "step"):
        """bn_stats "all" (training only): after the step's own output, run the rest of the network
        under no_grad for the BatchNorm running statistics alone, so that every BN layer sees this
        step's images as in the reference's full forward; the output and gradients are unchanged."""
        if bn_stats not in BN_STATS:
            raise ValueError(f"unknown bn_stats '{bn_stats}'; choose one of {', '.join(BN_STATS)}")
        rest = bn_stats == "all" and self.training
        if step == CONCAT:
            feats = self.backbone(x, upto=2)
            pooled = [b(f) for b, f in zip(self.branches, feats)]
            out = self.classifiers[CONCAT](torch.cat(pooled, dim=1), features)
            if rest:
                with torch.no_grad():
                    for c, p in zip(self.classifiers[:CONCAT], pooled):
                        c(p.detach())
            return out
        if features:
            raise ValueError(f"features=True is defined for the concat output (step {CONCAT}), not step {step}")
        feats = self.backbone(x, upto=step)
        own = self.branches[step](feats[step])
        out = self.classifiers[step](own)
        if rest:
            with torch.no_grad():
                f = feats[step].detach()
                feats = [g.detach() for g in feats]
                for stage in self.backbone.stages[step + 1:]:
                    f = stage(f)
                    feats.append(f)
                pooled = [own.detach() if j == step else b(g) for j, (b, g) in enumerate(zip(self.branches, feats))]
                for j, (c, p) in enumerate(zip(self.classifiers[:CONCAT], pooled)):
                    if j != step:
                        c(p)
                self.classifiers[CONCAT](torch.cat(pooled, dim=1))
        return out

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All four outputs from one backbone pass (the naive step runs this for every granularity;
        the PMG paper's 'combined' prediction is their sum)."""
        feats = self.backbone(x, upto=2)
        pooled = [b(f) for b, f in zip(self.branches, feats)]
        outs = [c(p) for c, p in zip(self.classifiers, pooled)]
        return outs + [self.classifiers[CONCAT](torch.cat(pooled, dim=1))]

    def param_groups(self, lr: float) -> list[dict]:
        """The paper's learning rates: new layers at lr, the (pretrained) backbone at lr/10."""
        new = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return [{"params": list(self.backbone.parameters()), "lr": lr / 10, "initial_lr": lr / 10},
                {"params": new, "lr": lr, "initial_lr": lr}]
