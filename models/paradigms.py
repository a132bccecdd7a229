"""The three paradigms of the paper as values: which classes a model trains on and its heads.

- uni   (efficiency-centric): one softmax head over every class of the spec;
- task  (task-centric): one 2-class softmax head over one task's [negative, positive];
- multi (multi-task): one sigmoid head per binary head of the spec (<class> v <negative>) plus
  one softmax head over the remaining classes; loss = sum of the heads' losses.

A target is one integer per head, -1 where the image says nothing about that head (a Dashboard
photo for the Defect-v-Normal head). Every head's loss is a mean over its labelled images and 0
when a batch has none, so no batch gives NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data.spec import Spec, SpecError

IGNORE = -1


@dataclass(frozen=True)
class Head:
    name: str
    kind: str  # "softmax" or "binary"
    classes: tuple[str, ...]  # softmax: its classes; binary: (negative, positive)

    @property
    def size(self) -> int:
        return 1 if self.kind == "binary" else len(self.classes)

    def target(self, cls: str) -> int:
        # binary: negative -> 0, positive -> 1; softmax: the class index
        return self.classes.index(cls) if cls in self.classes else IGNORE

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != IGNORE
        logits, target = logits[keep], target[keep]
        if self.kind == "binary":
            per = F.binary_cross_entropy_with_logits(logits[:, 0].float(), target.float(), reduction="sum")
        else:
            per = F.cross_entropy(logits.float(), target, reduction="sum")
        return per / keep.sum().clamp(min=1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, 0] > 0).long() if self.kind == "binary" else logits.argmax(1)


@dataclass(frozen=True)
class Paradigm:
    name: str
    task: str | None
    classes: tuple[str, ...]  # the dataset classes this model trains and validates on
    heads: tuple[Head, ...]

    @property
    def run_name(self) -> str:
        return f"{self.name}_{self.task}" if self.task else self.name

    @property
    def head_sizes(self) -> dict[str, int]:
        return {h.name: h.size for h in self.heads}

    def targets(self, cls: str) -> list[int]:
        return [h.target(cls) for h in self.heads]

    def split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip((h.name for h in self.heads), logits.split([h.size for h in self.heads], 1)))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        parts = self.split(logits)
        return sum(h.loss(parts[h.name], targets[:, i]) for i, h in enumerate(self.heads))

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per head: (number right, number labelled) in this batch."""
        parts = self.split(logits)
        right, seen = [], []
        for i, h in enumerate(self.heads):
            keep = targets[:, i] != IGNORE
            right.append((h.predict(parts[h.name])[keep] == targets[keep, i]).sum())
            seen.append(keep.sum())
        return torch.stack(right), torch.stack(seen)


def uni(spec: Spec, task: str | None) -> Paradigm:
    classes = tuple(spec.class_names)
    return Paradigm("uni", None, classes, (Head("classes", "softmax", classes),))


def task_centric(spec: Spec, task: str | None) -> Paradigm:
    if not task or task not in spec.tasks:
        raise SpecError(f"{spec.file}: paradigm 'task' needs --task, one of "
                        f"{', '.join(spec.tasks) or '(none: add tasks: to the spec)'}; got '{task}'")
    pair = tuple(spec.tasks[task])
    return Paradigm("task", task, pair, (Head(task, "softmax", pair),))


def multi(spec: Spec, task: str | None) -> Paradigm:
    mt = spec.multitask
    if not mt:
        raise SpecError(f"{spec.file}: paradigm 'multi' needs a 'multitask:' section "
                        f"(negative + binary heads); see docs/dataset.example.yaml")
    heads = [Head(c, "binary", (mt["negative"], c)) for c in mt["binary"]]
    if mt["softmax"]:
        heads.append(Head("others", "softmax", tuple(mt["softmax"])))
    return Paradigm("multi", None, tuple(spec.class_names), tuple(heads))


PARADIGMS = {"uni": uni, "task": task_centric, "multi": multi}


def build_paradigm(name: str, spec: Spec, task: str | None = None) -> Paradigm:
    if name not in PARADIGMS:
        raise ValueError(f"unknown paradigm '{name}'; choose one of {', '.join(PARADIGMS)}")
    return PARADIGMS[name](spec, task if name == "task" else None)
