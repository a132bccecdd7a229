"""How the one model answers a binary task: each paradigm's rules, and the rule chosen on validation
images (models/task_rules.py)."""
import math

import numpy as np
import pytest
import torch

from models import build_paradigm
from models.paradigms import NoAnswer
from models.task_rules import choose, describe
from pipeline.outputs import Heads

HEADS = Heads((("all", "softmax", ("normal", "defect", "dirt")),))
PAIR = ("normal", "defect")
# Each row: logits over normal, defect, dirt.
DEFECT_IN_DIRT = [0.0, 1.0, 3.0]    # a defect image the head puts in dirt: restricted right, argmax wrong
NORMAL_IN_DIRT = [0.0, 1.0, 3.0]    # the same logits for a normal image: argmax right, restricted wrong
CLEAR_DEFECT, CLEAR_NORMAL = [0.0, 3.0, 1.0], [3.0, 0.0, 1.0]


def sets(*groups):
    return {f"set{i}": (np.array([z for z, _ in g], np.float32), [c for _, c in g]) for i, g in enumerate(groups)}


def test_the_rule_with_the_higher_mean_validation_accuracy_wins():
    shifted_defects = [(DEFECT_IN_DIRT, "defect")] * 3 + [(CLEAR_NORMAL, "normal")] * 3
    r = choose(HEADS, PAIR, sets(shifted_defects))
    assert r["rule"] == "restricted" and r["accuracy"] == {"restricted": 1.0, "argmax": 0.5}
    shifted_normals = [(NORMAL_IN_DIRT, "normal")] * 3 + [(CLEAR_DEFECT, "defect")] * 3
    r = choose(HEADS, PAIR, sets(shifted_normals))
    assert r["rule"] == "argmax" and r["accuracy"] == {"restricted": 0.5, "argmax": 1.0}
    # the mean over sets, each set counted once whatever its size; images of other classes left out
    r = choose(HEADS, PAIR, sets(shifted_defects, shifted_normals + [([0, 0, 9.0], "dirt")] * 50))
    assert r["accuracy"] == {"restricted": 0.75, "argmax": 0.75} and r["sets"] == {"set0": 6, "set1": 6}
    assert r["rule"] == "restricted"  # a tie goes to the first of TASK_RULES
    assert "restricted (0.750 v argmax 0.750 on set0, set1)" in describe({"defect": r})


def test_a_head_of_the_two_classes_only_has_one_rule():
    two = Heads((("defect", "softmax", ("normal", "defect")),))
    r = choose(two, PAIR, sets([([0.0, 1.0], "defect"), ([1.0, 0.0], "defect")]))
    assert r == {"classes": ["normal", "defect"], "rule": "argmax", "accuracy": {"argmax": 0.5}, "sets": {"set0": 2}}
    assert describe({"defect": r}) == "defect: argmax"
    with pytest.raises(ValueError, match="unknown task rule"):
        HEADS.task_positive(np.zeros((1, 3)), PAIR, "threshold")
    with pytest.raises(ValueError, match="no head answers task"):
        two.task_positive(np.zeros((1, 2)), ("normal", "dirt"))


def test_binary_task_rule_per_paradigm(toy):
    uni = build_paradigm("uni", toy)  # normal, defect, dirt, bubble_wash, seat, dashboard
    z = torch.tensor([[0.0, 1.0, 3.0, 0, 0, 0],    # argmax dirt; defect > normal
                      [0.0, 2.0, 1.0, 0, 0, 0],    # argmax defect
                      [1.0, 0.5, 0.0, 0, 0, 2.0]])  # argmax dashboard; normal > defect
    assert uni.task_positive(z, ("normal", "defect")).tolist() == [False, True, False]
    assert uni.task_positive(z, ("normal", "defect"), "restricted").tolist() == [True, True, False]
    assert uni.task_rules(("normal", "defect")) == ("restricted", "argmax")
    task = build_paradigm("task", toy, "defect")
    assert task.task_positive(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), ("normal", "defect")).tolist() == [True, False]
    with pytest.raises(NoAnswer):
        task.task_positive(torch.zeros(1, 2), ("normal", "dirt"))
    multi = build_paradigm("multi", toy)  # defect, dirt, bubble_wash logits, then seat/dashboard
    zm = torch.tensor([[0.1, -2.0, 0, 0, 0], [-0.1, 3.0, 0, 0, 0]])
    assert multi.task_positive(zm, ("normal", "defect")).tolist() == [True, False]
    assert multi.task_positive(zm, ("normal", "dirt")).tolist() == [False, True]
    assert multi.task_rules(("normal", "dirt")) == task.task_rules(("normal", "defect")) == ("argmax",)
    with pytest.raises(NoAnswer, match="no binary head for 'seat'"):
        multi.task_positive(zm, ("normal", "seat"))
    prob, logit = multi.class_score(zm, "dirt")
    assert logit.tolist() == [-2.0, 3.0] and prob[1].item() == pytest.approx(1 / (1 + math.exp(-3)))
