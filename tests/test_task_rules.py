"""How a model answers a binary task: each paradigm's rules, and the rule (and threshold) chosen on
validation images (models/task_rules.py)."""
import math

import numpy as np
import pytest
import torch

from models import build_paradigm
from models.paradigms import NoAnswer
from models.task_rules import best_rule, choose, cross_validated, describe, fit_threshold
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
    # a threshold separates these too (cross-validated 1.0), but a tie goes to the first of TASK_RULES
    assert r["rule"] == "restricted" and r["accuracy"] == {"restricted": 1.0, "argmax": 0.5, "threshold": 1.0}
    shifted_normals = [(NORMAL_IN_DIRT, "normal")] * 3 + [(CLEAR_DEFECT, "defect")] * 3
    r = choose(HEADS, PAIR, sets(shifted_normals))
    assert r["rule"] == "argmax" and r["accuracy"] == {"restricted": 0.5, "argmax": 1.0, "threshold": 1.0}
    assert r["threshold"] == pytest.approx(2.0, abs=1e-4)  # margins 1 (normal) and 3 (defect), as many of each
    # the mean over sets, each set counted once whatever its size; images of other classes left out
    r = choose(HEADS, PAIR, sets(shifted_defects, shifted_normals + [([0, 0, 9.0], "dirt")] * 50))
    assert r["accuracy"]["restricted"] == r["accuracy"]["argmax"] == 0.75 and r["sets"] == {"set0": 6, "set1": 6}
    assert r["accuracy"]["threshold"] <= 0.75  # no one threshold serves both sets
    assert r["rule"] == "restricted"
    assert "restricted (0.750 v argmax 0.750" in describe({"defect": r})


def test_equal_scores_go_to_the_first_rule_whatever_the_rounding():
    # the same three accuracies summed in two orders: 0.8249999999999998 and 0.8250000000000001
    assert best_rule({"argmax": (0.85 + 0.8 + 0.825) / 3, "threshold": (0.8 + 0.825 + 0.85) / 3}) == "argmax"
    assert best_rule({"restricted": 0.5, "argmax": 0.6, "threshold": float("nan")}) == "argmax"
    assert best_rule({"argmax": 0.7, "threshold": 0.7 + 1e-6}) == "threshold"


def test_a_threshold_fitted_on_validation_moves_the_boundary_where_a_shift_moved_the_margins():
    # a shift lowers every margin (defect minus normal logit): restricted and argmax call all normal
    shifted = [([0.0, -1.0, -9.0], "defect")] * 5 + [([0.0, -4.0, -9.0], "normal")] * 5
    r = choose(HEADS, PAIR, sets(shifted, [(CLEAR_DEFECT, "defect"), (CLEAR_NORMAL, "normal")] * 5))
    assert r["rule"] == "threshold" and r["accuracy"] == {"restricted": 0.75, "argmax": 0.75, "threshold": 1.0}
    assert -4.0 < r["threshold"] < -1.0
    assert describe({"defect": r}).startswith(f"defect: threshold {r['threshold']:+.2f} (1.000 v restricted 0.750")
    assert HEADS.task_positive(np.array([[0.0, -1.0, -9.0], [0.0, -4.0, -9.0]]), PAIR, "threshold",
                               r["threshold"]).tolist() == [True, False]


def test_the_threshold_minimises_the_mean_logistic_loss_over_the_sets():
    # one set, symmetric about -2.5: the loss's minimum is there, by symmetry
    assert fit_threshold([np.array([-1.0, -1.0, -4.0, -4.0])], [np.array([1, 1, 0, 0])]) == pytest.approx(-2.5, abs=1e-4)
    # each set weighs alike: the set of 2 images pulls as hard as the set of 8
    a = fit_threshold([np.array([0.0, 2.0]), np.array([0.0] * 4 + [2.0] * 4)], [np.array([0, 1]), np.array([0] * 4 + [1] * 4)])
    assert a == pytest.approx(1.0, abs=1e-4)
    b = fit_threshold([np.array([0.0, 4.0]), np.array([0.0] * 4 + [2.0] * 4)], [np.array([0, 1]), np.array([0] * 4 + [1] * 4)])
    c = fit_threshold([np.array([0.0, 4.0] * 4), np.array([0.0] * 4 + [2.0] * 4)], [np.array([0, 1] * 4), np.array([0] * 4 + [1] * 4)])
    assert b == pytest.approx(c, abs=1e-4)
    # without both classes there is nothing to fit: the restricted boundary
    assert fit_threshold([np.array([1.0, 2.0])], [np.array([1, 1])]) == 0.0
    # cross-validated: each image is answered by the threshold fitted without it, so alternating
    # labels (nothing to learn) score below the 0.6 of the threshold fitted on all five
    m, y = np.array([0.0, 1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 0, 1])
    assert np.mean((m > fit_threshold([m], [y])) == y) == 0.6 and cross_validated([m], [y]) == 0.2


def test_a_head_of_the_two_classes_answers_by_its_decision_or_a_threshold():
    two = Heads((("defect", "softmax", ("normal", "defect")),))
    r = choose(two, PAIR, sets([([0.0, 1.0], "defect"), ([1.0, 0.0], "defect")]))
    assert r == {"classes": ["normal", "defect"], "rule": "argmax", "threshold": 0.0,
                 "accuracy": {"argmax": 0.5, "threshold": 0.5}, "sets": {"set0": 2}}
    assert describe({"defect": r}) == "defect: argmax (0.500 v threshold 0.500 on set0)"
    with pytest.raises(ValueError, match="unknown task rule"):
        HEADS.task_positive(np.zeros((1, 3)), PAIR, "median")
    with pytest.raises(ValueError, match="no head answers task"):
        two.task_positive(np.zeros((1, 2)), ("normal", "dirt"))


def test_binary_task_rule_per_paradigm(toy):
    uni = build_paradigm("uni", toy)  # normal, defect, dirt, bubble_wash, seat, dashboard
    z = torch.tensor([[0.0, 1.0, 3.0, 0, 0, 0],    # argmax dirt; defect > normal
                      [0.0, 2.0, 1.0, 0, 0, 0],    # argmax defect
                      [1.0, 0.5, 0.0, 0, 0, 2.0]])  # argmax dashboard; normal > defect
    assert uni.task_positive(z, ("normal", "defect")).tolist() == [False, True, False]
    assert uni.task_positive(z, ("normal", "defect"), "restricted").tolist() == [True, True, False]
    assert uni.task_rules(("normal", "defect")) == ("restricted", "argmax", "threshold")
    assert uni.task_positive(z, ("normal", "defect"), "threshold", 1.5).tolist() == [False, True, False]
    task = build_paradigm("task", toy, "defect")
    assert task.task_positive(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), ("normal", "defect")).tolist() == [True, False]
    assert task.task_positive(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), ("normal", "defect"), "threshold",
                              -1.5).tolist() == [True, True]
    with pytest.raises(NoAnswer):
        task.task_positive(torch.zeros(1, 2), ("normal", "dirt"))
    multi = build_paradigm("multi", toy)  # defect, dirt, bubble_wash logits, then seat/dashboard
    zm = torch.tensor([[0.1, -2.0, 0, 0, 0], [-0.1, 3.0, 0, 0, 0]])
    assert multi.task_positive(zm, ("normal", "defect")).tolist() == [True, False]
    assert multi.task_positive(zm, ("normal", "dirt")).tolist() == [False, True]
    assert multi.task_rules(("normal", "dirt")) == task.task_rules(("normal", "defect")) == ("argmax", "threshold")
    assert multi.task_positive(zm, ("normal", "defect"), "threshold", -0.2).tolist() == [True, True]
    with pytest.raises(NoAnswer, match="no binary head for 'seat'"):
        multi.task_positive(zm, ("normal", "seat"))
    prob, logit = multi.class_score(zm, "dirt")
    assert logit.tolist() == [-2.0, 3.0] and prob[1].item() == pytest.approx(1 / (1 + math.exp(-3)))
