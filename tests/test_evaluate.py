"""The evaluation module: hand-checkable metric cases, the per-paradigm rules, and evaluate.py
through its real command line on tiny checkpoints of every paradigm."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from evaluation import metrics
from evaluation.summary import ECE_AFTER, ECE_BEFORE
from models import build_paradigm
from models.checkpoint import CheckpointError
from models.scores import SCORERS, all_scores
from tests.builders import make_dataset
from tests.conftest import run_cli


# ---------------------------------------------------------------- metrics

def test_perfectly_separated_scores():
    y = np.array([1, 1, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert metrics.auroc(y, s) == 1.0 and metrics.aupr(y, s) == 1.0 and metrics.fpr_at_tpr(y, s) == 0.0
    # reversed scores: every OOD image accepted before any in-distribution one
    assert metrics.auroc(y, -s) == 0.0 and metrics.fpr_at_tpr(y, -s) == 1.0
    # one overlap: 4 positives, TPR 95% needs all four, which lets one of the two negatives through
    y2, s2 = np.array([1, 1, 1, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.3, 0.5, 0.1])
    assert metrics.fpr_at_tpr(y2, s2) == 0.5 and metrics.auroc(y2, s2) == 0.875
    assert math.isnan(metrics.auroc([1, 1], [0.2, 0.3]))
    from models import detection  # one definition: the release chooses its default scorer with them
    assert (metrics.auroc, metrics.aupr, metrics.fpr_at_tpr, metrics.detection) == \
        (detection.auroc, detection.aupr, detection.fpr_at_tpr, detection.detection)


def test_accuracy_and_macro_f1():
    y, p = [1, 1, 0, 0], [1, 0, 0, 0]
    assert metrics.accuracy(y, p) == 0.75
    # F1(pos) = 2/3, F1(neg) = 0.8
    assert metrics.macro_f1(y, p) == pytest.approx((2 / 3 + 0.8) / 2)


def test_ece_calibrated_and_overconfident():
    conf = np.full(10, 0.8)
    correct = np.array([1] * 8 + [0] * 2)
    assert metrics.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)
    # two bins, each calibrated: 0.3 (3 of 10 right) and 0.9 (9 of 10 right)
    conf2 = np.r_[np.full(10, 0.3), np.full(10, 0.9)]
    corr2 = np.r_[[1] * 3 + [0] * 7, [1] * 9 + [0]]
    assert metrics.ece(conf2, corr2) == pytest.approx(0.0, abs=1e-12)
    over = metrics.ece(np.full(10, 0.99), np.array([1, 0] * 5))
    assert over == pytest.approx(0.49)
    r = metrics.reliability(conf2, corr2)
    assert sum(r["count"]) == 20 and len(r["count"]) == 15


def test_top2_all_labels_rate():
    ranked = [["defect", "dirt", "normal"],   # both in top-2
              ["dirt", "defect", "seat"],     # both
              ["defect", "normal", "dirt"],   # dirt only 3rd
              ["seat", "dirt", "defect"]]     # defect only 3rd
    res = metrics.topk_analysis(ranked, ["defect", "dirt"], k=2)
    assert res["n"] == 4 and res["all_in_topk"] == 0.5
    assert res["top1"] == {"defect": 0.5, "dirt": 0.25}
    assert res["topk"] == {"defect": 0.75, "dirt": 0.75}


# ---------------------------------------------------------------- OOD scores

def test_scorers_on_known_logits():
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert SCORERS["max_logit"](z).tolist() == [2.0, 0.0]
    assert SCORERS["max_softmax"](z)[1].item() == pytest.approx(1 / 3)
    assert SCORERS["energy"](z)[1].item() == pytest.approx(math.log(3))


def test_kl_to_uniform_multi(toy):
    heads = build_paradigm("multi", toy)  # defect, dirt, bubble_wash (binary) + others (seat, dashboard)
    uniform = torch.zeros(2, 5)  # sigmoid(0) = 0.5 on each binary head, equal logits on the softmax head
    assert SCORERS["kl_uniform"](uniform, heads).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    confident = torch.tensor([[30.0, -30.0, -30.0, 30.0, -30.0]])
    kl = SCORERS["kl_uniform"](confident, heads)
    assert kl.shape == (1,)  # one score per image, summed over heads
    assert kl.item() == pytest.approx(4 * math.log(2), rel=1e-4)  # 3 x log 2 (binary) + log 2 (K = 2)
    one_head = torch.tensor([[math.log(3.0), 0, 0, 0, 0]])  # p = 0.75 on the defect head only
    expected = 0.75 * math.log(0.75) + 0.25 * math.log(0.25) + math.log(2)
    assert SCORERS["kl_uniform"](one_head, heads).item() == pytest.approx(expected, rel=1e-5)
    scores = all_scores(confident, heads)
    assert set(scores) == {"max_logit", "max_softmax", "energy", "kl_uniform"}
    assert scores["max_softmax"].item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- paradigm rules

def test_multi_label_ranking(toy):
    multi = build_paradigm("multi", toy)
    zm = torch.tensor([[math.log(9), math.log(4), -math.log(9), 0.0, 0.0]])  # p = 0.9, 0.8, 0.1; softmax 0.5/0.5
    names, s = multi.label_scores(zm)
    assert names == ["defect", "dirt", "bubble_wash", "seat", "dashboard", "normal"]
    assert s[0].tolist() == pytest.approx([0.9, 0.8, 0.1, 0.5, 0.5, 0.1 * 0.2 * 0.9])
    assert multi.rank_labels(zm)[0][:2] == ["defect", "dirt"]
    uni = build_paradigm("uni", toy)
    assert uni.rank_labels(torch.tensor([[0.0, 2.0, 1.0, 3.0, 0, 0]]))[0][:3] == ["bubble_wash", "defect", "dirt"]


def test_coherent_ranking_moves_the_labels_the_top_one_excludes(toy):
    """A task's negative and positive class exclude each other: below a positive top-1 the negative
    class moves to the end (and v.v.); top-1, the other labels' order and every score stay."""
    uni = build_paradigm("uni", toy)  # normal, defect, dirt, bubble_wash, seat, dashboard
    z = torch.tensor([[2.0, 1.0, 3.0, 0.5, 0.0, -1.0],   # dirt, normal, defect, ...
                      [3.0, 2.0, 1.0, 0.0, 0.5, -1.0],   # normal top-1: defect, dirt and seat excluded
                      [0.0, 1.0, 0.0, 3.0, 0.0, -1.0]])  # bubble_wash (no task) excludes nothing, defect does
    assert uni.rank_labels(z)[0][:3] == ["dirt", "normal", "defect"]
    coherent = uni.rank_labels(z, "coherent")
    assert coherent[0] == ["dirt", "defect", "bubble_wash", "seat", "dashboard", "normal"]
    assert coherent[1] == ["normal", "bubble_wash", "dashboard", "defect", "dirt", "seat"]
    assert uni.rank_labels(z)[2] == ["bubble_wash", "defect", "normal", "dirt", "seat", "dashboard"]
    assert coherent[2] == ["bubble_wash", "defect", "dirt", "seat", "dashboard", "normal"]  # same top-2
    labels, scores = uni.top_labels(z, 2, "coherent")
    names, all_scores = uni.label_scores(z)
    assert labels == [r[:2] for r in coherent]
    assert scores.tolist() == [[all_scores[i, names.index(l)].item() for l in row] for i, row in enumerate(labels)]
    assert uni.top_labels(z[:0], 2, "coherent")[1].shape == (0, 2)
    multi = build_paradigm("multi", toy)  # normal is the binary heads' shared negative: scored prod(1 - p)
    zm = torch.tensor([[math.log(1.5), -math.log(9), -math.log(9), 0.0, 0.0]])  # defect 0.6, dirt 0.1, normal 0.324
    plain, coherent = multi.rank_labels(zm)[0], multi.rank_labels(zm, "coherent")[0]
    assert plain == ["defect", "seat", "dashboard", "normal", "dirt", "bubble_wash"]
    assert coherent == ["defect", "seat", "dashboard", "dirt", "bubble_wash", "normal"]
    task = build_paradigm("task", toy, "defect")  # two labels: the ranking keeps both
    assert task.rank_labels(torch.tensor([[0.0, 1.0]]), "coherent") == [["defect", "normal"]]
    with pytest.raises(ValueError, match="unknown ranking rule 'best'"):
        uni.top_labels(z, 2, "best")


def test_calibration_decisions_multi(toy):
    multi = build_paradigm("multi", toy)
    zm = torch.tensor([[2.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0.0]])
    conf, correct = multi.decisions(zm, ["defect", "seat"])
    # defect image: labelled for the defect head only; seat image: for the softmax head only
    assert len(conf) == 2 and correct.tolist() == [True, True]
    conf, correct = multi.decisions(zm, ["normal", "seat"])
    # normal image is the negative of all three binary heads
    assert len(conf) == 4 and correct.tolist() == [False, True, True, True]


# ---------------------------------------------------------------- checkpoints and the CLI

# Another dataset (other classes), for the mismatch test.
OTHER = {"name": "other", "classes": {c: c for c in ("cat", "dog", "bird")},
         "splits": {"train": "train", "val": "val", "test": "test"}, "tasks": {"dog": ["cat", "dog"]}}


def test_efficiency_rounds_are_interleaved(tmp_path):
    from PIL import Image
    from evaluation import efficiency
    calls = []

    class Logged(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.w = name, torch.nn.Linear(2, 2)

        def forward(self, x):
            calls.append(self.name)
            return x.mean()

    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(paths[-1])
    systems = {"a": [(Logged("a"), (20, 16))], "b": [(Logged("b"), (20, 16))],
               "c": [(Logged("c1"), (20, 16)), (Logged("c2"), (24, 20))]}
    threads = torch.get_num_threads()
    out = efficiency.measure(systems, paths, batch_size=2, repeats=4)
    assert torch.get_num_threads() == threads  # one thread while timing, then torch's setting again
    assert all(len(m["ms_per_image_repeats"]) == 4 for m in out.values())
    assert out["c"]["ms_per_image"] == pytest.approx(np.median(out["c"]["ms_per_image_repeats"]))
    assert (out["c"]["models"], out["c"]["params"], out["a"]["images"]) == (2, 12, 5)
    # each system runs whole (3 batches per model), once in the warm-up and once per round, the
    # order rotating from round to round
    assert calls == [m for system in "a b c  a b c  b c a  c a b  a b c".split()
                     for m in {"a": ["a"] * 3, "b": ["b"] * 3, "c": ["c1"] * 3 + ["c2"] * 3}[system]]


def test_run_one_checkpoint_and_cache(tiny_data, artifacts, tmp_path):
    import evaluate
    ckpt = artifacts / "multi" / "exp1" / "best.pt"
    argv = ["run", "--checkpoint", str(ckpt), "--data", str(tiny_data), "--out", str(tmp_path), "--device", "cpu",
            "--no-progress", "--workers", "0"]
    m = json.loads(evaluate.main(argv).read_text())
    from data.spec import load_spec
    spec = load_spec(tiny_data)
    assert m["paradigm"] == "multi" and m["rejection"]["paper_scorer"] == "kl_uniform"
    assert set(m["tasks"]) == set(spec.tasks)
    for t in spec.tasks:
        sets = m["tasks"][t]["sets"]
        assert set(sets) == {"test", *spec.external.get(t, {})}
        assert 0 <= sets["test"]["accuracy"] <= 1 and 0 <= sets["test"]["f1_macro"] <= 1
    for o in spec.ood:  # the logit scorers and the feature detectors fitted on the train split
        assert set(m["rejection"][o]) == {"max_logit", "max_softmax", "energy", "kl_uniform", "knn", "mahalanobis",
                                          "rmds", "vim"}
    for name, mset in spec.multilabel.items():
        plain = m["multilabel"][name]["by_rule"]["plain"]
        assert plain["n"] > 0 and set(plain["topk"]) == set(mset.labels)
    for t in spec.tasks:  # each task's answer also by the model adapted to each set's statistics
        for entry in m["tasks"][t]["sets"].values():
            assert entry["bn_adapt"]["n"] == entry["n"] and 0 <= entry["bn_adapt"]["accuracy"] <= 1
    assert all(0 <= m["calibration"][s]["ece"] <= 1 for s in ("before", "after"))
    n_ext = sum(len(s) for s in spec.external.values())
    n_ext_val = sum(len(s) for s in spec.external_val.values())
    assert n_ext_val == n_ext  # the tiny dataset has a val split beside each external set
    n_sets = 1 + n_ext + n_ext_val + len(spec.ood) + len(spec.multilabel)
    # train, val and ood_val too (the OOD filter is fitted on them), each once; BN adapt on test, the
    # ext sets, val and the ext_val sets (what a task's rule and a robustness default are chosen on)
    # (the multi-task model answers each task one way: no BN-adapted validation entries, a uni lever)
    adapted = [s for s in m["inferred_sets"] if s.startswith("bn-adapt:")]
    assert len(adapted) == 1 + n_ext
    for t in spec.tasks:  # the answer on the images its rule was chosen on
        v = m["tasks"][t]["validation"]
        assert set(v) == {"val", *spec.external_val.get(t, {})}
        assert all(e["n"] > 0 and 0 <= e["accuracy"] <= 1 and "bn_adapt" not in e for e in v.values())
    assert len([s for s in m["inferred_sets"] if s not in ("train", "val") and not s.startswith(("ood_val/", "bn-adapt:"))]) == n_sets
    assert len(m["inferred_sets"]) == len(set(m["inferred_sets"]))
    from data.images import content_hash
    assert m["checkpoint_sha256"] == content_hash(ckpt)
    again = json.loads(evaluate.main(argv).read_text())
    assert again["inferred_sets"] == []  # every set came from the cache
    assert again["tasks"] == m["tasks"]


def test_bn_adapt_takes_the_statistics_of_the_set_and_leaves_the_model_alone(tmp_path):
    from PIL import Image
    from torch import nn
    from torchvision import transforms as T
    from models.adapt import bn_adapted
    colours = [(10, 200, 40), (30, 220, 80), (50, 180, 120), (70, 240, 160)]
    paths = []
    for i, c in enumerate(colours):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (4, 4), c).save(paths[-1])
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 2), nn.BatchNorm1d(2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = bn_adapted(model, paths, T.ToTensor(), batch_size=2, progress=False)
    pixels = torch.tensor(colours, dtype=torch.float64) / 255
    assert torch.allclose(adapted[0].running_mean.double(), pixels.mean(0), atol=1e-6)
    # the running variance is the average of the two batches' unbiased variances (4 px x 2 images each)
    var = torch.stack([pixels[i:i + 2].repeat_interleave(16, 0).var(0) for i in (0, 2)]).mean(0)
    assert torch.allclose(adapted[0].running_var.double(), var, atol=1e-6)
    assert not adapted.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(adapted[2].weight, model[2].weight)  # learned weights are kept
    # a larger set: the statistics of `max_images` of its images, spread evenly (the first and the last here)
    few = bn_adapted(model, paths, T.ToTensor(), batch_size=2, progress=False, max_images=2)
    assert torch.allclose(few[0].running_mean.double(), pixels[[0, 3]].mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="at least two readable images"):
        bn_adapted(model, paths[:1], T.ToTensor(), progress=False)
    with pytest.raises(ValueError, match="no BatchNorm"):
        bn_adapted(nn.Sequential(nn.Flatten()), paths, T.ToTensor(), progress=False)


def test_checkpoint_of_another_dataset_is_refused(tiny_data, artifacts, tmp_path):
    from data.spec import load_spec
    from models.checkpoint import load
    other = make_dataset(tmp_path / "other", OTHER)
    ckpt = artifacts / "uni" / "exp1" / "best.pt"
    with pytest.raises(CheckpointError) as e:
        load(ckpt, load_spec(other))
    msg = str(e.value)
    assert str(ckpt) in msg and str(other / "dataset.yaml") in msg
    assert "['cat', 'dog', 'bird']" in msg and str(load_spec(tiny_data).class_names) in msg
    proc = run_cli("evaluate.py", "run", "--checkpoint", ckpt, "--data", other, "--out", tmp_path / "r",
                   "--device", "cpu", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_report_on_tiny_checkpoints(tiny_data, artifacts, tmp_path):
    from data.spec import load_spec
    spec = load_spec(tiny_data)
    out = tmp_path / "results"
    ext = tmp_path / "ext"  # what run/extend.sh writes (tests/test_run_scripts.py runs it)
    ext.mkdir()
    (ext / "EXTEND.md").write_text("# Adding glovebox to a trained model\n\n| method | overall acc |\n|---|---|\n"
                                   "| extended | 0.907 |\n")
    proc = run_cli("evaluate.py", "report", "--artifacts", artifacts, "--data", tiny_data, "--out", out,
                   "--device", "cpu", "--no-progress", "--efficiency-images", "8", "--workers", "0",
                   "--variant", f"again={artifacts}", "--extension", ext)
    assert "REPORT.md" in proc.stdout
    report = (out / "REPORT.md").read_text()
    assert "\n## Adding glovebox to a trained model\n" in report and "| extended | 0.907 |" in report
    for title in ("Table 1: accuracy", "Table 2: macro F1", "Table 3: one-class recognition AUROC",
                  "Table 4: irrelevant-sample rejection", "Table 6: calibration", "Table 7: efficiency",
                  "Robustness levers of the efficiency-centric model"):
        assert f"## {title}" in report
    levers = report[report.index("## Robustness levers"):]  # BN adapt from the uni runs' own adapted outputs
    assert "| measure | BN adapt (test-time) | again |" in levers
    assert "| defect: val (chosen on) | " in levers and "| defect: val (chosen on) | — |" not in levers
    assert f"dataset {spec.name}; profile quick" in report and "trials: uni 2, multi 1" in report
    import provenance  # the header names the commit of this report and of the runs (main and --variant)
    commit = provenance.git_state()["commit"] or "unknown"
    head = report[:report.index("## The paper's claims")]
    assert f"- this report: commit {commit}" in head and f"- all runs: commit {commit}" in head
    assert json.loads((out / "runs" / "uni" / "exp1.json").read_text())["provenance"]["commit"] == provenance.git_state()["commit"]

    def rows(name):
        with open(out / name, newline="") as f:
            return list(csv.DictReader(f))

    t1 = rows("table1_accuracy.csv")
    rule_rows = {"efficiency-centric": ["argmax", "two classes", "threshold fitted on val"],
                 "multi-task": ["argmax", "threshold fitted on val"], "task-centric": ["argmax", "threshold fitted on val"]}
    assert [r["method"] for r in t1] == [*rule_rows, *(f"{p}, {r}" for p, rs in rule_rows.items() for r in rs)]
    uni_m = json.loads((out / "runs" / "uni" / "exp1.json").read_text())
    multi_m = json.loads((out / "runs" / "multi" / "exp1.json").read_text())
    for m in (uni_m, multi_m):  # each task answered by the rule chosen on val, the others kept as rows
        for t, e in m["tasks"].items():
            choice = e["rule_choice"]
            assert choice["rule"] in choice["accuracy"] and "val" in choice["sets"] and np.isfinite(choice["threshold"])
            test = e["sets"]["test"]
            assert test["accuracy"] == test["by_rule"][choice["rule"]]["accuracy"]
    assert "Chosen: " in report and "trials)" in report
    cols = [f"{t}: {s}" for t in spec.tasks for s in ["test", *spec.external.get(t, {})]]
    assert [k[:-5] for k in t1[0] if k.endswith(" mean")] == cols
    assert all(0 <= float(r[f"{c} mean"]) <= 1 for r in t1 for c in cols)
    assert t1[0][f"{cols[0]} n"] == "2" and float(t1[0][f"{cols[0]} std"]) == 0.0  # the copied trial
    assert [r["method"] for r in rows("table2_f1.csv")] == [r["method"] for r in t1]
    adapted = rows("table1_accuracy_bn_adapt.csv")  # each model with BatchNorm statistics of each set
    assert [r["method"] for r in adapted] == [r["method"] for r in t1]
    assert all(0 <= float(r[f"{c} mean"]) <= 1 for r in adapted for c in cols)
    adapted_md = report[report.index("## Table 1: accuracy (RQ1), BatchNorm statistics adapted to each set"):]
    assert "**" not in adapted_md[:adapted_md.index("\n## ", 5)]
    t3 = rows("table3_one_class_auroc.csv")
    assert [r["method"] for r in t3] == ["efficiency-centric", "multi-task", "task-centric"]
    t4 = rows("table4_rejection.csv")
    detectors = ("knn", "mahalanobis", "rmds", "vim")
    expected = [f"{run} [{s}" for run, paper in [("efficiency-centric", "max_logit"), ("multi-task", "kl_uniform"),
                                                  *[(f"task-centric ({t})", "max_logit") for t in spec.tasks]]
                for s in (f"{paper}]", "default: ", *[f"{d}]" for d in detectors])]
    assert len(t4) == len(expected) and all(r["method"].startswith(e) for r, e in zip(t4, expected))
    # the default row: each trial's own default, averaged over the near-OOD sets, as in the per-trial JSON
    trials = [json.loads(f.read_text()) for f in sorted((out / "runs" / "uni").glob("*.json"))]
    near = [o for o in spec.ood if spec.ood_kind[o] == "near"]
    by_trial = [np.mean([m["rejection"][o][m["rejection"]["default"]]["auroc"] for o in near]) for m in trials]
    assert float(t4[1]["near-OOD mean AUROC mean"]) == pytest.approx(np.mean(by_trial), abs=1e-5)
    assert t4[1]["method"] == f"efficiency-centric [default: {trials[0]['rejection']['default']} x2]"
    t4b = rows("table4_rejection_scorers.csv")
    assert {r["method"] for r in t4b} >= {f"{run} [{s}]" for run in ("efficiency-centric", "multi-task")
                                          for s in ("max_logit", "kl_uniform", *detectors)}
    assert {f"{o} {k} mean" for o in spec.ood for k in ("AUROC", "FPR@95")} <= set(t4[0])
    for name in spec.multilabel:
        t5 = rows(f"table5_top2_{name}.csv")
        assert [r["method"] for r in t5] == ["efficiency-centric", "efficiency-centric, coherent top-2", "multi-task",
                                             "multi-task, coherent top-2", "task-centric (union of task tables)"]
        for plain, coherent in (t5[0], t5[1]), (t5[2], t5[3]):  # the rule never changes top-1
            assert [plain[k] for k in plain if "top-1" in k] == [coherent[k] for k in coherent if "top-1" in k]
            assert all(0 <= float(r["test split: label in top-2 mean"]) <= 1 for r in (plain, coherent))
    eff = rows("table7_efficiency.csv")
    assert [r["models mean"] for r in eff] == ["1", "1", str(len(spec.tasks))]
    assert all(r["timed rounds mean"] == "9" and float(r["ms 95 % low mean"]) <= float(r["ms per image (median) mean"])
               <= float(r["ms 95 % high mean"]) for r in eff)
    assert "**" in report  # best per column in bold
    claim_rows = rows("claims.csv")
    assert [r["id"] for r in claim_rows] == ["C1", "C1-ext", "C2", "C3", "C4", "C5", "C6"]
    assert {r["verdict"] for r in claim_rows} <= {"holds", "does not hold", "inconclusive"}
    assert "over 9 interleaved rounds" in claim_rows[-1]["this run"]
    assert report.index("## The paper's claims") < report.index("## Table 1")
    for png in ("top2.png", "roc.png", "reliability.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in report
    assert len(list((out / "runs").glob("*/*.json"))) == 5
    # --variant: the same checkpoints again, so every ablation row equals the main one
    for kind in ("tasks", "ood_top2"):
        main, again = rows(f"ablation_uni_{kind}.csv")
        assert (main["method"], again["method"]) == ("main", "again")
        assert {k: v for k, v in main.items() if k != "method" and "train" not in k} == \
            {k: v for k, v in again.items() if k != "method" and "train" not in k}
    assert "## Ablation, efficiency-centric: OOD rejection (default scorer), calibration, top-2" in report
    assert len(list((out / "runs" / "variants" / "again").glob("*/*.json"))) == 5
    # summary.json: each run's figures with 95 % intervals, its trials by checkpoint content
    summary = json.loads((out / "summary.json").read_text())
    from data.images import content_hash
    assert summary["dataset"] == spec.name and set(summary["runs"]) == {"uni", "multi", "task_defect", "task_dirt"}
    uni = summary["runs"]["uni"]
    sha = content_hash(artifacts / "uni" / "exp1" / "best.pt")
    assert uni["trials"] == {"exp1": sha, "exp2": sha} and set(uni["default_scorers"]) == {"exp1", "exp2"}
    figures = {(f["figure"], f["set"]): f for f in uni["figures"]}
    assert {("accuracy", "test"), (ECE_AFTER, "test"), (ECE_BEFORE, "test"),
            ("OOD AUROC, default scorer", "mean over the OOD sets"),
            *[(f"accuracy, task {t}", s) for t, s in cols_of(spec)], *[("OOD AUROC, default scorer", o)
                                                                       for o in spec.ood]} == set(figures)
    assert all(f["lo"] <= f["value"] <= f["hi"] and f["trials"] == 2 for f in figures.values())
    t6 = {r["method"]: r for r in rows("table6_calibration.csv")}["efficiency-centric"]
    assert figures[("accuracy", "test")]["value"] == pytest.approx(float(t6["accuracy mean"]), abs=1e-5)
    for name, stage in ((ECE_AFTER, "after"), (ECE_BEFORE, "before")):
        assert figures[(name, "test")]["value"] == pytest.approx(float(t6[f"ECE (15 bins) {stage} mean"]), abs=1e-5)
    assert figures[("accuracy, task defect", "test")]["value"] == pytest.approx(float(t1[0]["defect: test mean"]),
                                                                                abs=1e-5)
    task = {(f["figure"], f["set"]) for f in summary["runs"]["task_defect"]["figures"]}
    assert ("accuracy, task defect", "test") in task and not any("task dirt" in f for f, _ in task)
    assert "`summary.json`" in report


def cols_of(spec):
    """(task, image set): the test split and each task's external sets."""
    return [(t, s) for t in spec.tasks for s in ["test", *spec.external.get(t, {})]]


def test_a_folder_of_release_bundles_among_the_runs_is_passed_over(tiny_data, artifacts, tmp_path, capsys):
    from data.spec import load_spec
    from evaluation.report import find_checkpoints
    (tmp_path / "uni" / "exp1").mkdir(parents=True)
    (tmp_path / "uni" / "exp1" / "best.pt").symlink_to(artifacts / "uni" / "exp1" / "best.pt")
    (tmp_path / "bundles" / "0123456789abcdef").mkdir(parents=True)
    (tmp_path / "bundles" / "0123456789abcdef" / "bundle.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    found = find_checkpoints(tmp_path, load_spec(tiny_data))
    assert found == {"uni": {"exp1": tmp_path / "uni" / "exp1" / "best.pt"}}
    err = capsys.readouterr().err
    assert "notes: not a run" in err and "bundles" not in err


def test_unreadable_image_gives_a_nan_row(tiny_data, artifacts, tmp_path, capsys):
    from data.spec import load_spec
    from models.checkpoint import load
    from models.inference import predict, valid_rows
    spec = load_spec(tiny_data)
    ckpt = load(artifacts / "uni" / "exp1" / "best.pt", spec)
    good = spec.split_samples("test")[0][0]
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    logits = predict(ckpt.model, [good, bad, good], ckpt.transform(), progress=False)
    assert logits.shape == (3, len(spec.classes)) and valid_rows(logits).tolist() == [True, False, True]
    assert torch.equal(logits[0], logits[2]) and "empty.jpg" in capsys.readouterr().err


def test_report_errors_are_one_line(tmp_path):
    proc = run_cli("evaluate.py", "report", "--artifacts", tmp_path, "--data", tmp_path / "missing",
                   "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    proc = run_cli("evaluate.py", "report", "--artifacts", tmp_path, "--variant", "nodir", check=False)
    assert proc.returncode == 2 and "write NAME=DIR" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("evaluate.py", "report", "--artifacts", tmp_path, "--extension", tmp_path / "nothing", check=False)
    assert proc.returncode == 2 and f"{tmp_path / 'nothing' / 'EXTEND.md'}: not found" in proc.stderr
    assert "Traceback" not in proc.stderr
