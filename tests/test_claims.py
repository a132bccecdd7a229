"""Paired bootstrap intervals and the claims rules, on hand-made cases with known answers."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import claims, stats
from evaluation.stats import interval, mean_of_first, paired_difference

SPEC = SimpleNamespace(tasks={"defect": ("normal", "defect"), "dirt": ("normal", "dirt")}, ood={"receipts": "ood/receipts"},
                       multilabel={"both": SimpleNamespace(labels=("defect", "dirt"))})


@pytest.fixture(autouse=True)
def fewer_replicates(monkeypatch):
    from evaluation import stats
    monkeypatch.setattr(stats, "N_BOOT", 300)


def task_run(spec, t):
    return f"task_{t}"


def test_identical_predictions_give_the_interval_zero():
    a = [[np.array([1, 0, 1, 1, 0], float)], [np.array([0, 0, 1, 1, 1], float)]]
    assert paired_difference(mean_of_first, a, a) == {"value": 0.0, "lo": 0.0, "hi": 0.0, "trials": 2}


def test_clear_and_unclear_differences():
    rng = np.random.default_rng(0)
    good, bad = [[np.ones(200)]], [[np.zeros(200)]]
    r = paired_difference(mean_of_first, good, bad)
    assert r["value"] == 1.0 and r["lo"] == 1.0
    a, b = [[rng.integers(0, 2, 20).astype(float)]], [[rng.integers(0, 2, 20).astype(float)]]
    r = paired_difference(mean_of_first, a, b)
    assert r["lo"] < 0 < r["hi"]  # 20 coin flips each: no difference can be told
    one = interval(mean_of_first, [[np.r_[np.ones(150), np.zeros(50)]]])
    assert one["value"] == 0.75 and one["lo"] < 0.75 < one["hi"] and one["hi"] - one["lo"] < 0.2
    with pytest.raises(ValueError, match="different images"):
        paired_difference(mean_of_first, [[np.ones(3)]], [[np.ones(4)]])


def trial(correct, id_s, ood_s, ranked, conf_correct):
    outcome = np.c_[np.ones(len(correct), int), np.asarray(correct, int)]  # (label, prediction): right where 1
    raw = {"tasks": {t: {"test": outcome} for t in SPEC.tasks},
           "rejection": {"receipts": {"max_logit": (np.asarray(id_s, float), np.asarray(ood_s, float))}},
           "multilabel": {"both": {"by_rule": {"plain": ranked}}}, "calibration": conf_correct}
    return {"rejection": {"paper_scorer": "max_logit"}}, raw


def results(uni, multi, task):
    return {"uni": {"exp1": uni}, "multi": {"exp1": multi}, "task_defect": {"exp1": task}, "task_dirt": {"exp1": task}}


def test_every_claim_holds_on_a_clear_case():
    n = 200
    ranked_both, ranked_one = [["defect", "dirt", "normal"]] * n, [["defect", "normal", "dirt"]] * n
    calibrated = (np.full(5 * n, 0.8), np.r_[np.ones(800, bool), np.zeros(200, bool)])
    uni = trial(np.ones(n), np.arange(n) + 1000, np.arange(n), ranked_both, calibrated)
    task = trial(np.ones(n), np.arange(n) + 100, np.arange(n), ranked_both, calibrated)
    multi = trial(np.ones(n), np.arange(n), np.arange(n) + 100, ranked_one, calibrated)
    rows = claims.claims(results(uni, multi, task), SPEC, task_run, {"uni": 1.0, "task": 2.0})  # T = 2
    assert [r["id"] for r in rows] == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert [r["verdict"] for r in rows] == [claims.HOLDS] * 6, rows


def test_every_claim_fails_on_the_opposite_case():
    n = 200
    ranked_one = [["defect", "normal", "dirt"]] * n
    overconfident = (np.full(n, 0.99), np.r_[np.ones(100, bool), np.zeros(100, bool)])
    uni = trial(np.zeros(n), np.arange(n), np.arange(n) + 100, ranked_one, overconfident)
    task = trial(np.ones(n), np.arange(n) + 100, np.arange(n), ranked_one, overconfident)
    multi = trial(np.ones(n), np.arange(n) + 1000, np.arange(n), [["defect", "dirt", "normal"]] * n, overconfident)
    rows = claims.claims(results(uni, multi, task), SPEC, task_run, {"uni": 2.0, "task": 2.0})
    assert [r["verdict"] for r in rows] == [claims.FAILS] * 6, rows


def test_auroc_statistic_equals_the_metric():
    from evaluation import metrics
    rng = np.random.default_rng(0)
    id_s = rng.normal(1, 1, 50)
    ood_s = np.r_[rng.normal(0, 1, 40), id_s[:5]]  # ties included
    assert stats.auroc_stat([id_s, ood_s]) == pytest.approx(
        metrics.auroc(np.r_[np.ones(50), np.zeros(45)], np.r_[id_s, ood_s]))


def test_small_noisy_samples_are_inconclusive():
    rng = np.random.default_rng(1)
    n = 12

    def noisy():
        ranked = [["defect", "dirt"] if rng.random() < 0.5 else ["defect", "normal"] for _ in range(n)]
        return trial(rng.integers(0, 2, n), rng.normal(0.3, 1, n), rng.normal(0, 1, n), ranked,
                     (np.full(n, 0.6), rng.integers(0, 2, n).astype(bool)))
    rows = claims.claims(results(noisy(), noisy(), noisy()), SPEC, task_run, {"uni": 1.8, "task": 2.0})
    assert [r["verdict"] for r in rows] == [claims.UNSURE] * 6, rows
    assert "| C1 |" in claims.markdown(rows)
