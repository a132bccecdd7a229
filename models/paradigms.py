"""The three paradigms of the paper as values: which classes a model trains on, its heads, and how
its heads answer each question the evaluation and the pipeline ask.

- uni   (efficiency-centric): one softmax head over every class of the spec;
- task  (task-centric): one 2-class softmax head over one task's [negative, positive];
- multi (multi-task): one sigmoid head per binary head of the spec (<class> v <negative>) plus
  one softmax head over the remaining classes; loss = sum of the heads' losses.

A target is one integer per head, IGNORE where the image says nothing about that head (a Dashboard
photo for the Defect-v-Normal head). Every head's loss is a mean over its labelled images and 0
when a batch has none, so no batch gives NaN.

Every rule dispatches on the kind of head, never on the paradigm's name:
- a binary task (negative, positive) is answered by the binary head whose positive class it is
  (positive iff logit > 0), else by a softmax head holding both classes (positive iff the argmax
  over the whole head is the positive class: the authors' rule, so a Normal-v-Defect image
  predicted as Dirt counts as "not defect"; rule `restricted` compares the two classes' logits,
  rule `threshold` compares their margin with a threshold fitted on validation images;
  models/task_rules.py chooses the rule per task on validation images);
- a class's one-class score is its binary head's sigmoid, else its softmax probability;
- labels are ranked by one score per class: a softmax head's probabilities, a binary head's
  sigmoid for its positive class, and for the binary heads' shared negative class the probability
  that none of them fires (heads taken as independent);
- calibration takes one decision per labelled (image, head) pair (binary: max(p, 1-p)); temperature
  scaling (models/calibration.py) divides each head's logits by its temperature, applied by
  `calibrated` through pipeline/outputs.py's `Heads.scale`, the one place serving applies it too.

A ranking's rule (RANKINGS): `plain` sorts the labels by score; `coherent` is the same order, except
that a label the labels above it exclude moves to the end: each task's negative and positive class
exclude each other (a panel is not Normal and Dirty), so the second label is one that can be true
beside the first. Top-1 is the same under both rules.

Label scores and rankings are computed once, in numpy, by pipeline/outputs.py (`output_heads`),
which serving calls directly; the methods here convert torch tensors to and from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from data.spec import Spec, SpecError
from pipeline.outputs import RANKINGS, Heads
from utils import to_numpy

IGNORE = -1
TITLES = {"uni": "efficiency-centric", "task": "task-centric", "multi": "multi-task"}


class NoAnswer(ValueError):
    """This model has no output for this question (e.g. no multi-task head for a task)."""


@dataclass(frozen=True)
class Head:
    name: str
    kind: str  # "softmax" or "binary"
    classes: tuple[str, ...]  # softmax: its classes; binary: (negative, positive)

    @property
    def size(self) -> int:
        return 1 if self.kind == "binary" else len(self.classes)

    @property
    def positive(self) -> str | None:
        return self.classes[1] if self.kind == "binary" else None

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

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """sigmoid of a binary head's logit (N, 1); softmax over a softmax head's classes."""
        return torch.sigmoid(logits) if self.kind == "binary" else logits.softmax(1)

    def confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Probability of the head's own decision: max(p, 1-p) for binary, max softmax otherwise."""
        p = self.probabilities(logits)
        return torch.maximum(p[:, 0], 1 - p[:, 0]) if self.kind == "binary" else p.max(1).values


@dataclass(frozen=True)
class Paradigm:
    name: str
    task: str | None  # set for a task-centric model: it answers this one task only
    classes: tuple[str, ...]  # the dataset classes this model trains and validates on
    heads: tuple[Head, ...]
    paper_scorer: str  # the paper's OOD score for this design (a key of models.scores.SCORERS)
    exclusive: frozenset = frozenset()  # unordered label pairs that cannot both be true (each task's two classes)

    @property
    def run_name(self) -> str:
        return f"{self.name}_{self.task}" if self.task else self.name

    @property
    def label(self) -> str:
        """The design's name in reports: 'efficiency-centric', 'task-centric (defect)'."""
        return run_label(self.run_name)

    @property
    def head_sizes(self) -> dict[str, int]:
        return {h.name: h.size for h in self.heads}

    def targets(self, cls: str) -> list[int]:
        return [h.target(cls) for h in self.heads]

    def split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The concatenated logits cut into one block per head (the only place that slices them)."""
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

    # --- the questions of the evaluation and the pipeline --------------------------------------
    def tasks(self, all_tasks) -> list[str]:
        """The tasks this model answers: its own for a task-centric model, every task otherwise."""
        return [self.task] if self.task else list(all_tasks)

    def _binary_head(self, cls: str) -> Head | None:
        return next((h for h in self.heads if h.kind == "binary" and h.positive == cls), None)

    def _task_head(self, task: tuple[str, str]) -> Head:
        found = self.output_heads.task_head(task)
        if found is None:
            raise NoAnswer(f"the {self.label} model has no head for task {tuple(task)}: no binary head for "
                           f"'{task[1]}' and no softmax head over both classes (heads: {[h.name for h in self.heads]})")
        return next(h for h in self.heads if h.name == found[0])

    def task_rules(self, task: tuple[str, str]) -> tuple[str, ...]:
        """The task rules (pipeline.outputs.TASK_RULES) that answer `task` differently on this model."""
        self._task_head(task)
        return self.output_heads.task_rules(task)

    def task_positive(self, logits: torch.Tensor, task: tuple[str, str], rule: str = "argmax",
                      threshold: float = 0.0) -> torch.Tensor:
        """Bool (N,): does the model say the task's positive class? (rules in the module doc)"""
        self._task_head(task)
        return torch.from_numpy(self.output_heads.task_positive(to_numpy(logits), task, rule, threshold))

    def class_score(self, logits: torch.Tensor, cls: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(probability, logit) per image that the image is `cls`."""
        head = self._binary_head(cls) or next((h for h in self.heads if h.kind == "softmax" and cls in h.classes),
                                              None)
        if head is None:
            raise NoAnswer(f"the {self.label} model has no binary head for '{cls}' and no softmax head with it "
                           f"(heads: {[h.name for h in self.heads]})")
        z = self.split(logits)[head.name]
        j = 0 if head.kind == "binary" else head.classes.index(cls)
        return head.probabilities(z)[:, j], z[:, j]

    @cached_property
    def output_heads(self) -> Heads:
        """The heads and exclusive pairs as pipeline.outputs answers from them (module doc)."""
        return Heads(tuple((h.name, h.kind, h.classes) for h in self.heads), self.exclusive)

    @property
    def labels(self) -> list[str]:
        """The labels this model ranks (the columns of `label_scores`)."""
        return self.output_heads.labels

    def label_scores(self, logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """(self.labels, one score per label (N, K), float32 on the CPU) for ranking labels (module doc)."""
        names, scores = self.output_heads.label_scores(to_numpy(logits))
        return names, torch.from_numpy(scores)

    def rank_labels(self, logits: torch.Tensor, rule: str = "plain") -> list[list[str]]:
        """Every label per image, best first, under `rule` (RANKINGS)."""
        return self.output_heads.rank_labels(to_numpy(logits), rule)

    def top_labels(self, logits: torch.Tensor, k: int = 2, rule: str = "plain",
                   temperatures=None) -> tuple[list[list[str]], torch.Tensor]:
        """The k best labels per image under `rule` (RANKINGS) and their scores (the prediction table's
        top-2), the scores temperature-scaled with `temperatures` (one per head; labels unchanged)."""
        labels, scores = self.output_heads.top_labels(to_numpy(logits), k, rule, temperatures)
        return labels, torch.from_numpy(scores)

    def calibrated(self, logits: torch.Tensor, temperatures) -> torch.Tensor:
        """The logits with each head's block divided by its temperature (one per head, in head order)."""
        return torch.from_numpy(self.output_heads.scale(to_numpy(logits), temperatures))

    def decisions(self, logits: torch.Tensor, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, correct) of every prediction on images with these class labels (module doc)."""
        conf, corr = [], []
        for h, z in zip(self.heads, self.split(logits).values()):
            target = torch.tensor([h.target(c) for c in labels], dtype=torch.long)
            keep = target != IGNORE
            if keep.any():
                conf.append(h.confidence(z[keep]))
                corr.append(h.predict(z[keep]) == target[keep])
        if not conf:
            return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
        return torch.cat(conf), torch.cat(corr)


def parse_run_name(run: str) -> tuple[str, str | None]:
    """(paradigm name, task) of a run folder name: the inverse of `Paradigm.run_name`."""
    name, _, task = run.partition("_")
    if name not in PARADIGMS or bool(task) != (name == "task"):
        raise ValueError(f"'{run}' is not a run name (uni, multi or task_<task>)")
    return name, task or None


def run_label(run: str) -> str:
    """'efficiency-centric', 'multi-task', 'task-centric (defect)' for a run name."""
    name, task = parse_run_name(run)
    return f"{TITLES[name]} ({task})" if task else TITLES[name]


def exclusive_pairs(spec: Spec) -> frozenset:
    """Each task's (negative, positive) as an unordered pair: labels that cannot both be true."""
    return frozenset(frozenset(pair) for pair in spec.tasks.values())


def uni(spec: Spec, task: str | None) -> Paradigm:
    classes = tuple(spec.class_names)
    return Paradigm("uni", None, classes, (Head("classes", "softmax", classes),), "max_logit", exclusive_pairs(spec))


def task_centric(spec: Spec, task: str | None) -> Paradigm:
    if not task or task not in spec.tasks:
        raise SpecError(f"{spec.file}: paradigm 'task' needs --task, one of "
                        f"{', '.join(spec.tasks) or '(none: add tasks: to the spec)'}; got '{task}'")
    pair = tuple(spec.tasks[task])
    return Paradigm("task", task, pair, (Head(task, "softmax", pair),), "max_logit", frozenset({frozenset(pair)}))


def multi(spec: Spec, task: str | None) -> Paradigm:
    mt = spec.multitask
    if not mt:
        raise SpecError(f"{spec.file}: paradigm 'multi' needs a 'multitask:' section "
                        f"(negative + binary heads); see docs/dataset.example.yaml")
    heads = [Head(c, "binary", (mt["negative"], c)) for c in mt["binary"]]
    if mt["softmax"]:
        heads.append(Head("others", "softmax", tuple(mt["softmax"])))
    # The paper scores the multi-task model by KL divergence of its heads from uniform.
    return Paradigm("multi", None, tuple(spec.class_names), tuple(heads), "kl_uniform", exclusive_pairs(spec))


PARADIGMS = {"uni": uni, "task": task_centric, "multi": multi}


def build_paradigm(name: str, spec: Spec, task: str | None = None) -> Paradigm:
    if name not in PARADIGMS:
        raise ValueError(f"unknown paradigm '{name}'; choose one of {', '.join(PARADIGMS)}")
    return PARADIGMS[name](spec, task if name == "task" else None)


def spec_paradigms(spec: Spec) -> list[Paradigm]:
    """Every model the spec can train: uni, multi (when it has a multitask section), one task model per task."""
    out = [uni(spec, None)]
    if spec.multitask:
        out.append(multi(spec, None))
    return out + [task_centric(spec, t) for t in spec.tasks]
