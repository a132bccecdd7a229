"""The robustness lever table on hand-made results: each lever (a uni variant, BN adapt) as paired
differences to the main runs, bold only where the interval says so, chosen-on rows apart."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from evaluation.robustness import BN_ADAPT, lever_table

SPEC = SimpleNamespace(tasks={"defect": ("normal", "defect")}, external={"defect": {"ext_snow": "ext/snow"}},
                       external_val={"defect": {"ext_snow": "ext_val/snow"}}, ood={"receipts": "ood/r"},
                       ood_kind={"receipts": "far"}, multilabel={})
N = 200


@pytest.fixture(autouse=True)
def fewer_replicates(monkeypatch):
    from evaluation import stats
    monkeypatch.setattr(stats, "N_BOOT", 200)


def outcome(share: float) -> np.ndarray:
    y = np.r_[np.zeros(N // 2, int), np.ones(N // 2, int)]
    pred = y.copy()
    pred[: int(round(N * (1 - share)))] ^= 1
    return np.c_[y, pred]


def trial(snow: float, adapted_snow: float, ood_shift: float = 0.0, wrong: int = 20):
    sets = {"test": outcome(0.9), "ext_snow": outcome(snow)}
    conf = np.full(N, 0.9)
    correct = np.r_[np.zeros(wrong, bool), np.ones(N - wrong, bool)]
    rng = np.random.default_rng(0)
    m = {"rejection": {"default": "energy"}}
    raw = {"tasks": {"defect": sets}, "bn_adapt": {"defect": {**sets, "ext_snow": outcome(adapted_snow)}},
           "validation": {"defect": {"val": outcome(0.9), "ext_snow": outcome(snow)}},
           "validation_bn_adapt": {"defect": {"val": outcome(0.9), "ext_snow": outcome(adapted_snow)}},
           "rejection": {"receipts": {"energy": (rng.normal(1 + ood_shift, 1, N), rng.normal(0, 1, 80))}},
           "calibration": {"after": (conf, correct)}}
    return m, raw


def test_each_lever_is_a_paired_difference_bold_only_beyond_chance():
    main = {"uni": {"exp1": trial(0.6, 0.8), "exp2": trial(0.6, 0.8)}}
    augmix = {"uni": {"exp1": trial(0.6, 0.6, ood_shift=0.0, wrong=60), "exp2": trial(0.6, 0.6, wrong=60)}}
    no_uni = {"task_defect": {"exp1": trial(0.9, 0.9)}}
    t = lever_table(main, {"aug_augmix": augmix, "steps": no_uni}, SPEC)
    assert t.columns == [BN_ADAPT, "aug_augmix"]  # a variant without a uni run is no lever
    rows = dict(t.rows)
    assert list(rows) == ["defect: val (chosen on)", "defect: ext_snow (chosen on)", "defect: test", "defect: ext_snow",
                          "far-OOD AUROC", "ECE"]
    assert rows["defect: ext_snow"][BN_ADAPT]["value"] == pytest.approx(0.2)
    assert rows["defect: ext_snow (chosen on)"][BN_ADAPT]["value"] == pytest.approx(0.2)
    assert rows["defect: test"][BN_ADAPT]["value"] == 0 and rows["defect: ext_snow"]["aug_augmix"]["value"] == 0
    assert "far-OOD AUROC" not in {r for r, c in t.rows if BN_ADAPT in c}  # BN adapt: OOD and ECE blank
    assert rows["ECE"]["aug_augmix"]["value"] == pytest.approx(0.2)  # 60 wrong at 0.9: ECE 0.2 worse
    md = t.markdown()
    assert "| defect: ext_snow | **+0.200 [" in md  # BN adapt better beyond chance: bold
    assert "| ECE | — | +0.200 [" in md  # worse beyond chance: not bold
    assert lever_table({"multi": main["uni"]}, {}, SPEC) is None


def test_lever_table_csv(tmp_path):
    main = {"uni": {"exp1": trial(0.6, 0.7)}}
    t = lever_table(main, {}, SPEC)
    t.write_csv(tmp_path / "levers.csv")
    lines = (tmp_path / "levers.csv").read_text().splitlines()
    assert lines[0].startswith("measure,BN adapt (test-time) value,BN adapt (test-time) lo")
    assert lines[4].startswith("defect: ext_snow,0.1,") and lines[-1] == "ECE,,,,"
