"""Paired bootstrap intervals and the claims rules, on hand-made cases with known answers."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import claims, stats
from evaluation.stats import interval, mean_of_first, paired_difference

SPEC = SimpleNamespace(tasks={"defect": ("normal", "defect"), "dirt": ("normal", "dirt")}, ood={"receipts": "ood/receipts"},
                       external={"defect": {"ext_snow": "ext/snow"}},
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
    raw = {"tasks": {t: {"test": outcome, **{e: outcome for e in SPEC.external.get(t, {})}} for t in SPEC.tasks},
           "rejection": {"receipts": {"max_logit": (np.asarray(id_s, float), np.asarray(ood_s, float))}},
           "multilabel": {"both": {"by_rule": {"plain": ranked}}},
           "calibration": {"before": (np.full(len(conf_correct[0]), 0.99), conf_correct[1]), "after": conf_correct}}
    return {"rejection": {"paper_scorer": "max_logit"}, "calibration": {"temperatures": {"classes": 1.5}}}, raw


def rounds(uni_ms: float, task_ms: float, n: int = 9) -> dict:
    """Per-round timings of two systems that both slow down alike in some rounds (other load)."""
    load = np.r_[1.0, 3.0, 1.0, 10.0, 1.0, 1.5, 1.0, 1.0, 2.0][:n]
    return {"uni": list(uni_ms * load), "task": list(task_ms * load)}


def results(uni, multi, task):
    return {"uni": {"exp1": uni}, "multi": {"exp1": multi}, "task_defect": {"exp1": task}, "task_dirt": {"exp1": task}}


def test_every_claim_holds_on_a_clear_case():
    n = 200
    ranked_both, ranked_one = [["defect", "dirt", "normal"]] * n, [["defect", "normal", "dirt"]] * n
    calibrated = (np.full(5 * n, 0.8), np.r_[np.ones(800, bool), np.zeros(200, bool)])
    uni = trial(np.ones(n), np.arange(n) + 1000, np.arange(n), ranked_both, calibrated)
    task = trial(np.ones(n), np.arange(n) + 100, np.arange(n), ranked_both, calibrated)
    multi = trial(np.ones(n), np.arange(n), np.arange(n) + 100, ranked_one, calibrated)
    rows = claims.claims(results(uni, multi, task), SPEC, task_run, rounds(1.0, 2.0))  # T = 2
    assert [r["id"] for r in rows] == ["C1", "C1-ext", "C2", "C3", "C4", "C5", "C6"]
    assert [r["verdict"] for r in rows] == [claims.HOLDS] * 7, rows
    assert rows[1]["this run"].startswith("defect ext_snow +0.000")
    # C5 judges the temperature-scaled model (here calibrated; before it, ECE 0.19 at confidence 0.99)
    c5 = rows[5]
    assert "temperature-scaled" in c5["claim"] and "after temperature scaling (T = 1.5" in c5["this run"]
    assert "before: 0.190 [" in c5["this run"]
    assert "a perfectly calibrated model would measure 0.0" in c5["this run"] and "p = " in c5["this run"]


def test_every_claim_fails_on_the_opposite_case():
    n = 200
    ranked_one = [["defect", "normal", "dirt"]] * n
    overconfident = (np.full(n, 0.99), np.r_[np.ones(100, bool), np.zeros(100, bool)])
    uni = trial(np.zeros(n), np.arange(n), np.arange(n) + 100, ranked_one, overconfident)
    task = trial(np.ones(n), np.arange(n) + 100, np.arange(n), ranked_one, overconfident)
    multi = trial(np.ones(n), np.arange(n) + 1000, np.arange(n), [["defect", "dirt", "normal"]] * n, overconfident)
    rows = claims.claims(results(uni, multi, task), SPEC, task_run, rounds(2.0, 2.0))
    assert [r["verdict"] for r in rows] == [claims.FAILS] * 7, rows


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
    rows = claims.claims(results(noisy(), noisy(), noisy()), SPEC, task_run, rounds(1.8, 2.0))
    assert [r["verdict"] for r in rows] == [claims.UNSURE] * 7, rows
    assert "| C1 |" in claims.markdown(rows)


def c6(ratios, n_tasks=2, task_ms=10.0):
    return claims.c6_cost({"uni": [r * task_ms for r in ratios], "task": [task_ms] * len(ratios)}, n_tasks)


def test_c6_verdict_from_the_interval_of_the_median_ratio():
    bound = 1.5 / 2
    # one wild round either way does not move the interval (the 2nd and 8th of 9 ordered ratios)
    assert c6([0.5, 0.52, 0.48, 0.51, 3.0, 0.49, 0.5, 0.02, 0.53])["verdict"] == claims.HOLDS
    assert c6([0.7, 0.72, 0.68, 0.74, 0.71, 0.69, 0.73, 0.7, 0.72])["verdict"] == claims.HOLDS
    # rounds on both sides of the bound: the median alone would say holds, the interval cannot tell
    spread = [0.6, 0.65, 0.7, 0.72, 0.74, 0.78, 0.8, 0.85, 0.9]
    assert sorted(spread)[4] < bound and c6(spread)["verdict"] == claims.UNSURE
    assert c6([1.0, 1.1, 1.05, 0.98, 1.2, 1.02, 1.01, 1.3, 1.04])["verdict"] == claims.FAILS
    # with 4 tasks a clear 0.5 is above the bound 1.5/4, yet below 1: inconclusive
    assert c6([0.5, 0.52, 0.48, 0.51, 0.5, 0.49, 0.5, 0.47, 0.53], n_tasks=4)["verdict"] == claims.UNSURE
    # five rounds are too few for a 95 % interval of a median: never a verdict
    assert c6([0.5] * 5)["verdict"] == claims.UNSURE
    assert claims.c6_cost({"uni": None, "task": [1.0] * 9}, 2) == {**c6([0.5] * 9), "this run": "n/a",
                                                                   "verdict": claims.UNSURE}
    row = c6([0.5, 0.52, 0.48, 0.51, 3.0, 0.49, 0.5, 0.02, 0.53])
    assert "ratio 0.50 [0.48, 0.53] over 9 interleaved rounds" in row["this run"]


def test_c6_pairs_the_rounds():
    # a load that slows both systems tenfold in a round changes no ratio
    assert claims.c6_cost(rounds(1.0, 2.0), 2)["verdict"] == claims.HOLDS
    # unpaired, the same numbers would overlap: uni's slow rounds are slower than task's quick ones
    t = rounds(1.0, 2.0)
    assert max(t["uni"]) > min(t["task"])


def test_median_interval_uses_order_statistics():
    r = stats.median_interval([5, 1, 9, 2, 8, 3, 7, 4, 6])
    assert (r["value"], r["lo"], r["hi"], r["n"]) == (5.0, 2.0, 8.0, 9)
    assert np.isnan(stats.median_interval([1, 2, 3, 4, 5])["lo"])
