"""Bold only where the paired interval says so: the rule of evaluation/significance.py and how
a ReportTable shows it, on hand-made per-image outcomes and scores."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation import metrics, significance, stats
from evaluation.tables import ReportTable


@pytest.fixture(autouse=True)
def fewer_replicates(monkeypatch):
    monkeypatch.setattr(stats, "N_BOOT", 200)


def outcome(labels, preds):
    return [np.c_[np.asarray(labels, int), np.asarray(preds, int)]]


def test_f1_stat_equals_the_metric():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 300):
        for _ in range(30):
            y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
            if rng.random() < 0.3:
                p[:] = y[0]  # one predicted class only: a class with no positive prediction
            assert stats.f1_stat(outcome(y, p)) == pytest.approx(metrics.macro_f1(y, p), abs=1e-12)
            assert stats.accuracy_stat(outcome(y, p)) == pytest.approx(metrics.accuracy(y, p))


def test_clear_winner_is_bold_and_a_tie_is_not():
    y = np.r_[np.zeros(150, int), np.ones(150, int)]
    right, half = y.copy(), y.copy()
    half[::2] = 1 - half[::2]  # half of the images wrong
    rows = {"uni": ("uni", [outcome(y, right)] * 2), "multi": ("multi", [outcome(y, half)] * 2),
            "task": ("task", [outcome(y, half)] * 2)}
    best, diffs = significance.best_if_significant(stats.accuracy_stat, rows)
    assert best == "uni" and set(diffs) == {"multi", "task"} and all(d["lo"] > 0.4 for d in diffs.values())
    rows["task"] = ("task", [outcome(y, right)] * 2)  # task-centric as good: no paradigm wins
    assert significance.best_if_significant(stats.accuracy_stat, rows)[0] is None


def test_rows_of_one_paradigm_are_not_rivals():
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    wrong = 1 - y
    rows = {"uni": ("uni", [outcome(y, y)]), "uni restricted": ("uni", [outcome(y, y)]),
            "multi": ("multi", [outcome(y, wrong)])}
    best, diffs = significance.best_if_significant(stats.accuracy_stat, rows)
    assert best in {"uni", "uni restricted"} and set(diffs) == {"multi"}
    only_uni = {k: v for k, v in rows.items() if v[0] == "uni"}
    assert significance.best_if_significant(stats.accuracy_stat, only_uni) == (None, {})


def test_lower_is_better_and_the_mean_auroc_statistic():
    rng = np.random.default_rng(1)
    ind = rng.normal(2, 1, 300)
    good = [ind, rng.normal(-2, 1, 200), rng.normal(-3, 1, 100)]
    poor = [ind, rng.normal(2, 1, 200), rng.normal(2, 1, 100)]
    assert stats.mean_auroc_stat(good) == pytest.approx(
        np.mean([metrics.auroc(np.r_[np.ones(300), np.zeros(len(g))], np.r_[ind, g]) for g in good[1:]]))
    rows = {"a": ("uni", [good]), "b": ("multi", [poor])}
    assert significance.best_if_significant(stats.mean_auroc_stat, rows)[0] == "a"
    assert significance.best_if_significant(stats.mean_auroc_stat, rows, higher_is_better=False)[0] == "b"


def test_table_bolds_the_chosen_row_only():
    t = ReportTable("t", ["x", "y"], bold={"x": None})
    t.add("a", {"x": [0.9], "y": [0.9]})
    t.add("b", {"x": [0.5], "y": [0.5]})
    md = t.markdown()
    assert "**" not in md.splitlines()[2].split("|")[2]  # x: the rule found no winner
    assert "**0.900**" in md.splitlines()[2].split("|")[3]  # y: no rule, best mean
    t.bold["x"] = "b"
    assert "**0.500**" in t.markdown().splitlines()[3]
    t.add("c", {"x": [0.5004], "y": [0.1]})  # equal to the chosen row as shown: bold too
    assert "**0.500**" in t.markdown().splitlines()[4]


def test_each_replicate_of_a_block_is_the_metric_of_its_draw(monkeypatch):
    """The bootstrap computes a block of replicates at once (`stat.batch`): every row must be the
    evaluation.metrics value of the images that row drew, ties and ECE bins included."""
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
    id_s, ood_s = np.round(rng.normal(1, 1, 50), 1), np.round(rng.normal(0, 1, 30), 1)  # many ties
    conf, right = rng.uniform(0, 1, 70), rng.integers(0, 2, 70)
    conf[:5] = [0.0, 1.0, 1 / 15, 2 / 15, 0.5]  # bin edges
    draws = {n: rng.integers(0, n, (8, n)) for n in (60, 50, 30, 70)}
    o = np.c_[y, p][draws[60]]
    assert np.allclose(stats.accuracy_stat.batch([o]), [metrics.accuracy(y[i], p[i]) for i in draws[60]])
    assert np.allclose(stats.f1_stat.batch([o]), [metrics.macro_f1(y[i], p[i]) for i in draws[60]])
    aurocs = stats.auroc_stat.batch([id_s[draws[50]], ood_s[draws[30]]])
    assert np.allclose(aurocs, [metrics.auroc(np.r_[np.ones(50), np.zeros(30)], np.r_[id_s[i], ood_s[j]])
                                for i, j in zip(draws[50], draws[30])])
    # from the draws' indices (what the bootstrap calls): the same, through the pair matrix or not
    assert np.allclose(stats.auroc_stat.indexed([id_s, ood_s], [draws[50], draws[30]]), aurocs)
    more = np.round(rng.normal(0, 1, 30), 1)
    both = stats.mean_auroc_stat.indexed([id_s, ood_s, more], [draws[50], draws[30], draws[30][::-1]])
    assert np.allclose(both, (aurocs + stats.auroc_stat.batch([id_s[draws[50]], more[draws[30][::-1]]])) / 2)
    monkeypatch.setattr(stats, "MAX_PAIRS", 10)
    assert np.allclose(stats.auroc_stat.indexed([id_s, ood_s], [draws[50], draws[30]]), aurocs)
    eces = stats.ece_stat.batch([np.c_[conf, right][draws[70]]])
    assert np.allclose(eces, [metrics.ece(conf[i], right[i], 15) for i in draws[70]])
    assert stats.ece_stat([np.c_[conf, right]]) == pytest.approx(metrics.ece(conf, right, 15))


def test_blocks_of_replicates_do_not_change_the_interval(monkeypatch):
    """Drawing the replicates in smaller blocks (what bounds memory on a large test split) gives
    an interval of the same draws' distribution: equal observed value, close ends."""
    rng = np.random.default_rng(3)
    a = [[rng.normal(1, 1, 200), rng.normal(0, 1, 80)] for _ in range(2)]
    b = [[rng.normal(0.5, 1, 200), rng.normal(0, 1, 80)] for _ in range(2)]
    whole = stats.paired_difference(stats.auroc_stat, a, b, n_boot=2000)
    monkeypatch.setattr(stats, "BLOCK_ELEMENTS", 280 * 7)  # blocks of 7 replicates
    blocks = stats.paired_difference(stats.auroc_stat, a, b, n_boot=2000)
    assert blocks["value"] == whole["value"]
    assert blocks["lo"] == pytest.approx(whole["lo"], abs=0.02) and blocks["hi"] == pytest.approx(whole["hi"], abs=0.02)
    assert blocks["lo"] > 0


def test_ece_if_calibrated_is_the_floor_a_calibrated_model_measures_and_flags_an_overconfident_one():
    """A model calibrated by construction measures about the floor (p not small); one whose outcomes
    fall 0.15 below its confidence is far above it (p = 0); the floor falls with more decisions."""
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 400)
    calibrated = np.c_[conf, rng.random(400) < conf]
    over = np.c_[conf, rng.random(400) < conf - 0.15]
    f = stats.ece_if_calibrated([[calibrated]], n_draws=500)
    assert 0.02 < f["mean"] < f["hi"] < 0.1 and f["p"] > 0.05 and f["trials"] == 1
    assert abs(stats.ece_stat([calibrated]) - f["mean"]) < f["hi"] - f["mean"]
    assert stats.ece_if_calibrated([[over]], n_draws=500)["p"] == 0.0 and stats.ece_stat([over]) > 0.1
    big = np.c_[rng.uniform(0.5, 1.0, 4000), np.zeros(4000)]
    assert stats.ece_if_calibrated([[big]], n_draws=200)["mean"] < f["mean"] / 2
    assert np.isnan(stats.ece_if_calibrated([])["mean"])
