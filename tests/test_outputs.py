"""pipeline/outputs.py: a model's outputs -> label scores, rankings and OOD scores in numpy, without
torch; hand-computed cases, and the torch wrappers (paradigms, scores, detectors) giving its numbers."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_paradigm
from models import detectors as det
from models import ood
from models.release import detector_arrays
from models.scores import SCORERS
from pipeline import outputs as out
from pipeline.bundle import Bundle

ROOT = Path(__file__).resolve().parents[1]
MULTI = out.Heads((("defect", "binary", ("normal", "defect")), ("dirt", "binary", ("normal", "dirt")),
                   ("others", "softmax", ("seat", "dashboard"))),
                  frozenset({frozenset(("normal", "defect")), frozenset(("normal", "dirt"))}))


def test_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None  # import torch raises\n"
            "import json, numpy as np, pipeline.outputs as o\n"
            "print(json.dumps(o.ood_score('energy', np.zeros((2, 3), np.float32), None, None, {}).tolist()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == pytest.approx([math.log(3)] * 2)


# ---------------------------------------------------------------- labels by hand

def test_coherent_order_moves_what_a_kept_label_excludes():
    names = ["dirt", "normal", "defect", "seat"]
    exclusive = frozenset({frozenset(("normal", "defect")), frozenset(("normal", "dirt"))})
    assert out.coherent_order(names, [0, 1, 2, 3], exclusive) == [0, 2, 3, 1]  # normal clashes with dirt
    assert out.coherent_order(names, [1, 0, 2, 3], exclusive) == [1, 3, 0, 2]  # normal first: dirt, defect last
    assert out.coherent_order(names, [3, 2, 1, 0], frozenset()) == [3, 2, 1, 0]


def test_label_scores_of_a_multi_task_model():
    z = np.array([[math.log(9), math.log(0.25), 0.0, math.log(3)]], np.float32)  # p 0.9, 0.2; softmax 1/4, 3/4
    names, s = MULTI.label_scores(z)
    assert names == MULTI.labels == ["defect", "dirt", "seat", "dashboard", "normal"]
    assert s.dtype == np.float32 and s[0].tolist() == pytest.approx([0.9, 0.2, 0.25, 0.75, 0.1 * 0.8], rel=1e-6)
    assert MULTI.rank_labels(z) == [["defect", "dashboard", "seat", "dirt", "normal"]]
    labels, top = MULTI.top_labels(z, 2, "coherent")
    assert labels == [["defect", "dashboard"]] and top[0].tolist() == pytest.approx([0.9, 0.75])
    assert MULTI.top_labels(z[:0], 2)[1].shape == (0, 2)
    with pytest.raises(ValueError, match="unknown ranking rule 'best'"):
        MULTI.top_labels(z, 2, "best")
    with pytest.raises(ValueError, match=r"need \(N, 4\)"):
        MULTI.label_scores(np.zeros((1, 5), np.float32))


def test_heads_from_a_bundle_manifest(toy):
    manifest = {"paradigm": {"heads": [["defect", "binary", ["normal", "defect"]],
                                       ["dirt", "binary", ["normal", "dirt"]],
                                       ["bubble_wash", "binary", ["normal", "bubble_wash"]],
                                       ["others", "softmax", ["seat", "dashboard"]]]},
                "top2": {"exclusive": {t: list(pair) for t, pair in toy.tasks.items()}}}
    assert out.Heads.from_manifest(manifest) == build_paradigm("multi", toy).output_heads
    with pytest.raises(ValueError, match="head 'x'"):
        out.Heads((("x", "binary", ("a", "b", "c")),))


# ---------------------------------------------------------------- OOD scores by hand

def test_kl_uniform_by_hand():
    assert out.kl_uniform(np.zeros((2, 4), np.float32), MULTI).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    one = out.Heads((("all", "softmax", ("a", "b", "c")),))
    z = np.log(np.array([[1.0, 2.0, 5.0]], np.float32))  # q = 1/8, 2/8, 5/8
    q = np.array([1, 2, 5]) / 8
    expected = math.log(3) + float((q * np.log(q)).sum())  # log K minus the entropy
    for heads in (one, None):  # no heads: one softmax head
        kl = out.kl_uniform(z, heads)
        assert kl.dtype == np.float32 and kl.tolist() == pytest.approx([expected], rel=1e-6)


def test_knn_by_hand_in_chunks(monkeypatch):
    params = {"k": 2, "bank": np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)}
    q = np.array([[2.0, 0.0], [0.0, -3.0], [0.0, 0.5]], np.float32)  # normalised: (1,0), (0,-1), (0,1)
    expected = [-math.sqrt(2)] * 3  # 2nd nearest: 0, sqrt2, 2 | sqrt2, sqrt2, 2 | sqrt2, 0, sqrt2
    assert out.knn(q, params).tolist() == pytest.approx(expected, rel=1e-6)
    assert out.knn(q, {**params, "k": 3}).tolist() == pytest.approx([-2.0, -2.0, -math.sqrt(2)], rel=1e-6)
    monkeypatch.setattr(out, "KNN_CHUNK", 3)  # one query per chunk
    assert out.knn(q, params).tolist() == pytest.approx(expected, rel=1e-6)


def test_mahalanobis_and_rmds_with_identity_precision():
    means, eye = np.array([[0.0, 0.0], [3.0, 0.0]]), np.eye(2)
    q = np.array([[1.0, 0.0], [3.0, 2.0]])
    # squared euclidean to the nearest mean: 1 (to (0,0)), 4 (to (3,0))
    assert out.mahalanobis(q, {"means": means, "precision": eye}).tolist() == pytest.approx([-1.0, -4.0])
    # background N(0, I): distances 1 and 13; relative: (0, 3) and (13 - 13, 4 - 13) -> -0, 9
    rmds = {"means": means, "precision": eye, "background_mean": np.zeros((1, 2)), "background_precision": eye}
    assert out.rmds(q, rmds).tolist() == pytest.approx([0.0, 9.0])


def test_every_scorer_on_an_empty_batch_and_unknown_names():
    z, f = np.zeros((0, 4), np.float32), np.zeros((0, 2), np.float32)
    params = {"knn": {"k": 1, "bank": np.eye(2)}, "mahalanobis": {"means": np.eye(2), "precision": np.eye(2)},
              "rmds": {"means": np.eye(2), "precision": np.eye(2), "background_mean": np.zeros((1, 2)),
                       "background_precision": np.eye(2)},
              "vim": {"weight": np.eye(2), "bias": np.zeros(2), "origin": np.zeros(2), "residual": np.eye(2)[:, :1],
                      "alpha": 1.0}}
    for name in out.SCORER_NAMES:
        s = out.ood_score(name, z, f, MULTI, params)
        assert s.shape == (0,) and s.dtype == np.float32, name
    with pytest.raises(ValueError, match="unknown OOD score 'odin'; choose one of max_logit, .*, vim"):
        out.ood_score("odin", z, f, MULTI, params)
    with pytest.raises(ValueError, match="'knn' needs its fitted detector"):
        out.ood_score("knn", z, f, MULTI, {})


# ---------------------------------------------------------------- the torch wrappers agree

@pytest.mark.parametrize("name,task", [("uni", None), ("task", "defect"), ("multi", None)])
def test_paradigm_and_scorers_give_the_numpy_numbers(toy, name, task):
    paradigm = build_paradigm(name, toy, task)
    heads = paradigm.output_heads
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, sum(paradigm.head_sizes.values()), generator=g) * 4
    z[:8] = z[:8].round()  # ties
    z.requires_grad_()
    zn = z.detach().numpy()
    names, s = paradigm.label_scores(z)
    assert names == paradigm.labels == heads.labels
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32
    np.testing.assert_array_equal(s.numpy(), heads.label_scores(zn)[1])
    for rule in out.RANKINGS:
        labels, top = paradigm.top_labels(z, 2, rule)
        labels_np, top_np = heads.top_labels(zn, 2, rule)
        assert labels == labels_np and isinstance(top, torch.Tensor)
        np.testing.assert_array_equal(top.numpy(), top_np)
        assert paradigm.rank_labels(z, rule) == heads.rank_labels(zn, rule)
    for scorer, f in SCORERS.items():
        got = f(z, paradigm)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        np.testing.assert_array_equal(got.numpy(), out.LOGIT_SCORERS[scorer](zn, heads))
        assert f(z[:0], paradigm).shape == (0,)
    # the numbers of torch's own operators
    zd = z.detach()
    np.testing.assert_allclose(SCORERS["energy"](z, paradigm).numpy(), torch.logsumexp(zd, 1).numpy(), rtol=1e-6)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :2]
    assert paradigm.top_labels(z, 2)[0] == [[names[j] for j in row] for row in order.tolist()]
    if name != "multi":  # one softmax head
        np.testing.assert_allclose(s.numpy(), zd.softmax(1).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_wrappers_take_cuda_tensors(toy):
    paradigm = build_paradigm("multi", toy)
    z = torch.randn(5, sum(paradigm.head_sizes.values()), device="cuda")
    assert paradigm.top_labels(z, 2, "coherent")[1].device.type == "cpu"
    assert SCORERS["kl_uniform"](z, paradigm).device.type == "cpu"


def test_detectors_give_the_numpy_numbers_from_their_state_and_from_a_bundle():
    g = torch.Generator().manual_seed(3)
    feats, labels = torch.randn(120, 8, generator=g), torch.arange(120) % 3
    weight, bias = torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    fitted = det.fit_all(feats, labels, weight, bias)
    assert set(fitted) == set(out.DETECTOR_SCORERS)
    params, arrays = detector_arrays(ood.OODFilter(fitted, "knn"))
    bundle = Bundle(Path("."), {"ood": {"detectors": params}}, arrays)  # as serving reads detectors.npz
    q = torch.cat([torch.randn(20, 8, generator=g) * s for s in (0.5, 1.0, 5.0)])
    for name, d in fitted.items():
        got = d.score(q.requires_grad_())
        assert got.dtype == torch.float32 and got.shape == (60,)
        np.testing.assert_array_equal(got.numpy(), out.DETECTOR_SCORERS[name](q.detach().numpy(),
                                                                             bundle.detector(name)))
        assert d.score(q[:0]).shape == (0,)
