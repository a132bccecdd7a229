"""Ablation tables on hand-made results: Tables 1-2 again under an equal-compute variant's
task-centric models, with the protocols named and bold only where the interval says so."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evaluation.ablation import ablation_tables, protocol_tables

SPEC = SimpleNamespace(tasks={"defect": ("normal", "defect")}, external={}, ood={}, multilabel={}, ood_kind={})


@pytest.fixture(autouse=True)
def fewer_replicates(monkeypatch):
    from evaluation import stats
    monkeypatch.setattr(stats, "N_BOOT", 200)


def trial(correct_share: float, budget: str, n: int = 200):
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    pred = y.copy()
    pred[: int(round(n * (1 - correct_share)))] ^= 1
    acc = float(np.mean(pred == y))
    m = {"backbone": "b", "crop": 32, "protocol": {"budget": budget}, "checkpoint": "/nonexistent/exp/best.pt",
         "tasks": {"defect": {"sets": {"test": {"accuracy": acc, "f1_macro": acc, "n": n},
                                      "ext_a": {"accuracy": acc / 2, "f1_macro": acc / 2, "n": n},
                                      "ext_b": {"accuracy": acc / 4, "f1_macro": acc / 4, "n": n}}}}}
    return m, {"tasks": {"defect": {"test": np.c_[y, pred]}}}


def test_equal_compute_variant_gets_tables_1_2_with_its_task_models(monkeypatch):
    monkeypatch.setattr("evaluation.paper_tables.task_run", lambda spec, t: f"task_{t}")
    monkeypatch.setattr("evaluation.ablation.task_run", lambda spec, t: f"task_{t}")
    main = {"uni": {"exp1": trial(0.95, "epochs"), "exp2": trial(0.95, "epochs")},
            "task_defect": {"exp1": trial(0.60, "epochs"), "exp2": trial(0.60, "epochs")}}
    steps = {"task_defect": {"exp1": trial(0.95, "steps"), "exp2": trial(0.95, "steps")}}
    tables = dict(protocol_tables(main, {"steps": steps}, SPEC))
    assert set(tables) == {"table1_accuracy_steps", "table2_f1_steps"}
    t = tables["table1_accuracy_steps"]
    assert "variant 'steps'" in t.title and "budget=steps" in t.note and "budget=epochs" in t.note
    rows = dict(t.rows)
    assert rows[next(k for k in rows if k.startswith("task"))]["defect: test"] == pytest.approx([0.95, 0.95])
    assert t.bold["defect: test"] is None  # equal accuracy under equal compute: nothing bold
    # under equal epochs the efficiency-centric model wins beyond chance: bold
    from evaluation.paper_tables import table_task_accuracy
    assert table_task_accuracy(main, SPEC).bold["defect: test"] is not None
    # a variant with an efficiency-centric model is an ordinary ablation, not a protocol table
    spec = SimpleNamespace(**{**vars(SPEC), "external": {"defect": {"ext_a": "x", "ext_b": "y"}}})
    tables = dict(ablation_tables(main, {"zeros": {"uni": main["uni"]}}, spec))
    assert tables and not any(k.startswith("table1") for k in tables)
    rows = dict(tables["ablation_uni_tasks"].rows)  # external sets: their mean accuracy per trial
    assert rows["zeros"]["defect ext acc"] == pytest.approx([0.95 * 3 / 8] * 2)
