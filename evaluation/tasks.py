"""How each paradigm answers a question about an image, from its concat-output logits.

Binary task (negative, positive), e.g. defect = (normal, defect) — `task_positive`:
- task:  its own 2-class head; positive iff argmax is the positive class (index 1);
- uni:   argmax over ALL classes; positive iff that argmax is the task's positive class (the
         authors' rule: a Normal-v-Defect image predicted as Dirt counts as "not defect");
         `restricted=True` is the variant that compares only the task's two classes' logits;
- multi: the sigmoid head named after the task's positive class; positive iff sigmoid > 0.5
         (logit > 0). A spec whose multitask has no binary head for that class has no multi-task
         answer: `NoAnswer` is raised and reports show the cell as missing.

One-class score for a class (RQ2, Table 3) — `class_score`, (probability, logit):
- uni: softmax probability / logit of the class; task: softmax probability / logit of its positive
  class; multi: sigmoid probability / logit of the class's binary head.

Label ranking (RQ3) — `rank_labels`, best first:
- uni: classes by softmax probability;
- multi: every class gets one score: a binary head's class its sigmoid probability, a softmax-head
  class its softmax probability, the shared negative class the product of (1 - sigmoid) over the
  binary heads (the probability that no binary head fires, heads taken as independent); classes are
  ranked by that score (the authors' code ranked the concatenated outputs the same way, minus
  the negative class, but used the values as indices).
- task models do not rank: each answers its own question (`task_positive`), and a label is found
  when its task model says positive (the union of the task-centric prediction tables).

Calibration decisions — `decisions`: (confidence, correct) of each prediction a model makes on the
test images of the classes it was trained for: uni one per image over all classes, task one per
image of its two classes, multi one per labelled (image, head) pair (binary head: max(p, 1-p)).
"""
from __future__ import annotations

import torch


class NoAnswer(ValueError):
    """This paradigm has no output for this question (e.g. no multi-task head for a task)."""


def _head_slices(paradigm) -> dict:
    out, start = {}, 0
    for h in paradigm.heads:
        out[h.name] = (h, slice(start, start + h.size))
        start += h.size
    return out


def _binary_head(paradigm, cls: str):
    for name, (h, sl) in _head_slices(paradigm).items():
        if h.kind == "binary" and h.classes[1] == cls:
            return h, sl
    raise NoAnswer(f"the multi-task model has no binary head for '{cls}' (heads: "
                   f"{[h.name for h in paradigm.heads]}); add it to multitask.binary in the spec")


def task_positive(paradigm, logits: torch.Tensor, task: tuple[str, str], restricted: bool = False) -> torch.Tensor:
    """Bool (N,): does the model say the task's positive class?"""
    neg, pos = task
    if paradigm.name == "task":
        if tuple(paradigm.classes) != (neg, pos):
            raise NoAnswer(f"a task model for {paradigm.classes} has no answer for task {task}")
        return logits.argmax(1) == 1
    if paradigm.name == "uni":
        i, j = paradigm.classes.index(neg), paradigm.classes.index(pos)
        if restricted:
            return logits[:, j] > logits[:, i]
        return logits.argmax(1) == j
    if paradigm.name == "multi":
        _, sl = _binary_head(paradigm, pos)
        return logits[:, sl][:, 0] > 0
    raise ValueError(f"unknown paradigm {paradigm.name}")


def class_score(paradigm, logits: torch.Tensor, cls: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, logit) per image that the image is `cls`."""
    if paradigm.name in ("uni", "task"):
        if cls not in paradigm.classes:
            raise NoAnswer(f"model over {paradigm.classes} has no output for '{cls}'")
        j = paradigm.classes.index(cls)
        return logits.softmax(1)[:, j], logits[:, j]
    if paradigm.name == "multi":
        _, sl = _binary_head(paradigm, cls)
        z = logits[:, sl][:, 0]
        return torch.sigmoid(z), z
    raise ValueError(f"unknown paradigm {paradigm.name}")


def label_scores(paradigm, logits: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """(class names, per-class score (N, K)) used for ranking; see the module docstring."""
    if paradigm.name == "uni":
        return list(paradigm.classes), logits.softmax(1)
    if paradigm.name == "multi":
        names, cols, none_fires = [], [], torch.ones(len(logits))
        negative = None
        for h, sl in _head_slices(paradigm).values():
            z = logits[:, sl]
            if h.kind == "binary":
                p = torch.sigmoid(z[:, 0])
                names.append(h.classes[1])
                cols.append(p)
                none_fires = none_fires * (1 - p)
                negative = h.classes[0]
            else:
                names += list(h.classes)
                cols += list(z.softmax(1).T)
        if negative is not None:
            names.append(negative)
            cols.append(none_fires)
        return names, torch.stack(cols, 1)
    raise NoAnswer(f"paradigm {paradigm.name} does not rank labels; combine its task tables instead")


def rank_labels(paradigm, logits: torch.Tensor) -> list[list[str]]:
    names, scores = label_scores(paradigm, logits)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return [[names[j] for j in row] for row in order.tolist()]


def decisions(paradigm, logits: torch.Tensor, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct) of every prediction on images with these class labels (see module doc)."""
    conf, corr = [], []
    for h, sl in _head_slices(paradigm).values():
        keep = torch.tensor([h.target(c) != -1 for c in labels], dtype=torch.bool)
        if not keep.any():
            continue
        target = torch.tensor([h.target(c) for c in labels])[keep]
        z = logits[keep][:, sl]
        if h.kind == "binary":
            p = torch.sigmoid(z[:, 0])
            conf.append(torch.maximum(p, 1 - p))
            corr.append((p > 0.5).long() == target)
        else:
            prob = z.softmax(1)
            conf.append(prob.max(1).values)
            corr.append(prob.argmax(1) == target)
    if not conf:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(conf), torch.cat(corr)
