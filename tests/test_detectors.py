"""Feature-space OOD detectors: hand-checkable fits and scores, the filter fitted in memory with the
default chosen on ood_val, features from the same forward pass, and evaluation using them."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from models import CONCAT, build_model, build_paradigm
from models import detectors as det
from models import ood
from models.scores import SCORERS
from tests.conftest import run_cli

SMALL = dict(branch_mid=16, branch_out=32, hidden=16)


def two_clusters(n=30, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(2, d)
    centres[0, 0], centres[1, 0] = -3.0, 3.0
    labels = torch.arange(2 * n) % 2
    return centres[labels] + torch.randn(2 * n, d, generator=g) * 0.5, labels, centres


def head_of(centres):
    """A linear head that separates the clusters (ViM needs the heads' weight and bias)."""
    return centres.clone(), torch.zeros(len(centres))


# ---------------------------------------------------------------- fitting and scoring

@pytest.mark.parametrize("name", [n for n in det.DETECTORS if n != "vim"])  # vim: test_vim_by_hand
def test_point_at_class_mean_is_in_distribution(name):
    z, y, centres = two_clusters()
    d = det.DETECTORS[name]().fit(z, y, *head_of(centres))
    means = torch.stack([z[y == c].mean(0) for c in (0, 1)])
    far = torch.full((1, z.shape[1]), 40.0)
    s_mean, s_train, s_far = d.score(means), d.score(z), d.score(far)
    assert s_mean.shape == (2,) and s_far.shape == (1,)
    assert (s_far < s_train.min()).all() and (s_mean > s_far).all()
    if name == "mahalanobis":
        assert s_mean.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # zero distance to its own mean


def test_knn_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    bank, queries, k = torch.randn(40, 5, generator=g), torch.randn(7, 5, generator=g) * 3, 4
    d = det.KNN(k=k).fit(bank)
    b = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    expected = []
    for q in queries.numpy():
        q = q / np.linalg.norm(q)
        dists = sorted(float(np.sqrt(((q - row) ** 2).sum())) for row in b)
        expected.append(-dists[k - 1])
    assert d.score(queries).tolist() == pytest.approx(expected, abs=1e-5)
    # a train feature itself: its nearest neighbour (k = 1) is at distance 0
    assert det.KNN(k=1).fit(bank).score(bank[:3]).tolist() == pytest.approx([0.0] * 3, abs=1e-5)


def test_knn_bank_is_bounded_seeded_and_k_shrinks_for_tiny_banks():
    z = torch.randn(50, 3)
    a, b = det.KNN(max_bank=20).fit(z), det.KNN(max_bank=20).fit(z)
    assert a.bank.shape == (20, 3) and torch.equal(a.bank, b.bank)
    assert a.k == 2  # a tenth of a 20-feature bank; 50 from 500 features on
    assert det.KNN().fit(torch.randn(600, 3)).k == det.DEFAULT_K


def test_rmds_by_hand_in_2d():
    # class 0 around (-2, 0), class 1 around (2, 0): within-class covariance 0.5 I;
    # all features: mean (0, 0), covariance diag(4.5, 0.5).
    ring = torch.tensor([[-1.0, 0], [1, 0], [0, 1], [0, -1]])
    z = torch.cat([ring + torch.tensor([-2.0, 0]), ring + torch.tensor([2.0, 0])])
    y = torch.tensor([0] * 4 + [1] * 4)
    rmds = det.RMDS(shrinkage=0.0).fit(z, y)
    maha = det.Mahalanobis(shrinkage=0.0).fit(z, y)
    q = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    # (2, 0): class 1 distance 0, background 4 / 4.5  -> score 8/9
    # (0, 3): class distances (4 + 9) / 0.5 = 26, background 9 / 0.5 = 18 -> score -(26 - 18) = -8
    assert rmds.score(q).tolist() == pytest.approx([8 / 9, -8.0], rel=1e-4)
    assert maha.score(q).tolist() == pytest.approx([0.0, -26.0], rel=1e-4, abs=1e-5)


def test_ledoit_wolf_shrinkage_as_sklearn():
    from sklearn.covariance import ledoit_wolf
    x = torch.randn(12, 20, dtype=torch.float64)  # fewer rows than features: singular without shrinkage
    x = x - x.mean(0)
    cov = det.shrunk_covariance(x)
    expected, _ = ledoit_wolf(x.numpy(), assume_centered=True)
    ridge = 1e-6 * float(torch.trace(x.T @ x / 12) / 20)
    assert np.allclose(cov.numpy() - ridge * np.eye(20), expected, atol=1e-10)
    assert torch.linalg.eigvalsh(cov).min() > 0
    y = torch.arange(12) % 3
    assert torch.isfinite(det.Mahalanobis().fit(x, y).score(x)).all()  # tiny split, wide features


def test_vim_by_hand():
    """Features in a 3-d subspace of 4-d (plus a little noise): the residual of a query is its
    4th coordinate; the score is logsumexp(logits) - alpha * residual, alpha from the train split."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(200, 4, generator=g, dtype=torch.float64)
    z[:, 3] *= 1e-3
    w, b = torch.randn(2, 4, generator=g, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    vim = det.ViM().fit(z, None, w, b)
    assert vim.dim == 3 and vim.origin.abs().max() < 1e-12  # zero bias: the origin is 0
    q = torch.tensor([[0.5, -1.0, 2.0, 0.0], [0.5, -1.0, 2.0, 5.0]], dtype=torch.float64)
    assert vim.residual_norm(q).tolist() == pytest.approx([0.0, 5.0], abs=1e-2)
    zn, qn, wn = z.numpy(), q.numpy(), w.numpy()
    resid_train = np.abs(zn @ vim.residual.numpy()).ravel()
    alpha = (zn @ wn.T).max(1).mean() / resid_train.mean()
    logits = qn @ wn.T
    expected = np.log(np.exp(logits).sum(1)) - alpha * np.abs(qn @ vim.residual.numpy()).ravel()
    assert vim.score(q).tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    assert vim.score(q)[1] < vim.score(q)[0]  # the same logits, off the train subspace: less in-distribution
    with pytest.raises(ValueError, match="weight and bias"):
        det.ViM().fit(z)


# ---------------------------------------------------------------- the filter and its default

def test_default_is_chosen_on_ood_val_by_auroc_then_fpr():
    from models.paradigms import Paradigm
    paradigm = Paradigm("uni", None, ("a", "b"), (), "max_logit")
    id_scores = {"good": torch.arange(10.0), "bad": torch.arange(10.0), "tied": torch.arange(10.0)}
    ood_sets = {"near": {"good": torch.full((5,), -1.0), "bad": torch.arange(5.0) + 3, "tied": torch.full((5,), -1.0)},
                "far": {"good": torch.full((5,), -2.0), "bad": torch.full((5,), 20.0), "tied": torch.full((5,), -1.0)}}
    name, table = ood.choose_default(paradigm, id_scores, ood_sets)
    assert table["good"] == {"auroc": 1.0, "fpr95": 0.0} and table["bad"]["auroc"] < 0.5
    assert name in ("good", "tied") and table["tied"] == table["good"]
    assert ood.choose_default(paradigm, id_scores, {}) == ("max_logit", {})  # no ood_val sets: the paper's


def test_fit_filter_fits_on_train_chooses_on_ood_val_and_writes_nothing(tiny_data, artifacts):
    from data.spec import load_spec
    from models import checkpoint as checkpoints
    from models.inference import predict_features
    spec = load_spec(tiny_data)
    path = artifacts / "task_defect" / "exp1" / "best.pt"
    before = sorted(path.parent.iterdir())
    ckpt = checkpoints.load(path, spec)
    seen = []

    def extract(name, items):
        seen.append(name)
        return predict_features(ckpt.model, items, ckpt.transform(), progress=False)

    filt, fitted = ood.fit_filter(ckpt, spec, extract=extract)
    assert seen == ["train", *[f"ood_val/{o}" for o in spec.ood_val], "val"]
    assert fitted["classes"] == ["normal", "defect"] and fitted["ood_val"] == sorted(spec.ood_val)
    assert fitted["n_train"] == len(spec.split_samples("train", ["normal", "defect"]))
    assert set(filt.detectors) == set(det.DETECTORS)
    assert filt.detectors["mahalanobis"].means.shape[0] == 2  # the task's two dataset classes
    assert filt.detectors["vim"].weight.shape[0] == 2  # the task head's two logits
    sel = filt.selection
    assert set(sel) == {*SCORERS, *det.DETECTORS}
    assert filt.default == max(sel, key=lambda n: (sel[n]["auroc"], -sel[n]["fpr95"]))
    assert sorted(path.parent.iterdir()) == before  # nothing written beside the checkpoint


def test_the_ood_filter_needs_no_scikit_learn_until_it_chooses():
    """Serving ships without scikit-learn: models.ood and the detection metrics import without it."""
    run_cli("-c", "import sys; import models.ood, models.detection, models.release; "
                  "assert 'sklearn' not in sys.modules, 'sklearn imported'")


# ---------------------------------------------------------------- features of the same forward pass

def test_features_are_what_the_concat_classifier_sees(toy):
    torch.manual_seed(0)
    for paradigm in (build_paradigm("uni", toy), build_paradigm("multi", toy)):
        model = build_model("resnet18", paradigm, **SMALL).eval()
        seen = {}
        hook = model.classifiers[CONCAT].register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            logits, feats = model(x, features=True)
            plain = model(x)
        hook.remove()
        clf = model.classifiers[CONCAT]
        assert torch.equal(logits, plain) and feats.shape == (3, SMALL["hidden"])
        assert torch.allclose(feats, clf.trunk(seen["x"]))  # the hidden layer after ELU
        assert torch.allclose(torch.cat([h(feats) for h in clf.heads.values()], 1), logits)
    with pytest.raises(ValueError, match="concat"):
        model(x, step=0, features=True)


# ---------------------------------------------------------------- evaluation and the CLI

def test_evaluation_reports_detectors(tiny_data, artifacts, tmp_path):
    from data.spec import load_spec
    from evaluation.checkpoint import evaluate_checkpoint
    spec = load_spec(tiny_data)
    ckpt = tmp_path / "uni" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(artifacts / "uni" / "exp1" / "best.pt", ckpt)
    m, raw = evaluate_checkpoint(ckpt, spec, cache_dir=tmp_path / "cache", progress=False)
    assert {"train", "val"} <= set(m["inferred_sets"])
    assert [p.name for p in ckpt.parent.iterdir()] == ["best.pt"]  # the filter is fitted in memory
    assert all(f"ood_val/{o}" in m["inferred_sets"] for o in spec.ood_val)
    assert m["rejection"]["detectors"] == list(det.DETECTORS)
    sel = m["rejection"]["selection"]
    assert set(sel) == {*SCORERS, *det.DETECTORS} and m["rejection"]["default"] in sel
    assert sel[m["rejection"]["default"]]["auroc"] == max(v["auroc"] for v in sel.values())
    for o in spec.ood:
        assert set(m["rejection"][o]) == {*SCORERS, *det.DETECTORS}
        for name in det.DETECTORS:
            r = m["rejection"][o][name]
            assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["fpr95"] <= 1
            assert len(raw["rejection"][o][name][0]) == r["n_id"]
    # again: refitted from the cached features, to the same filter
    again, _ = evaluate_checkpoint(ckpt, spec, cache_dir=tmp_path / "cache", progress=False)
    assert again["inferred_sets"] == [] and again["rejection"] == m["rejection"]
    # another checkpoint at the same path: other content, so other features and another fit
    shutil.copy(artifacts / "multi" / "exp1" / "best.pt", ckpt)
    other, _ = evaluate_checkpoint(ckpt, spec, cache_dir=tmp_path / "cache", progress=False)
    assert "train" in other["inferred_sets"] and other["rejection"]["paper_scorer"] == "kl_uniform"
