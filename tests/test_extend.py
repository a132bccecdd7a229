"""extend.py: growing a trained model to a new class (imprinting + replay fine-tune), its checkpoint,
its errors, and its release bundle beside the runs."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from data.concat_add import add_task
from data.generate import generate
from data.spec import load_spec, parse_spec
from models import build_model, build_paradigm
from models import checkpoint as checkpoints
from models.extend import FULL_SHARE, ExtendError, Options, ReplayBatches, budget, class_means, grow
from models.pmg import CONCAT
from tests.builders import TOY, make_dataset
from tests.conftest import TINY_TRAIN, run_cli

NEW = "washer_fluid"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny embedded dataset without washer_fluid, that class alone, and the two added together."""
    root = tmp_path_factory.mktemp("extend")
    generate(root / "old", seed=0, size=40, train=6, val=3, test=3, ext=2, ood=2, multilabel=2, workers=1,
             montage=False, hold_out=NEW, hold_out_dir=root / NEW)
    add_task(root / "old", root / NEW, root / "full")
    return root


@pytest.fixture(scope="module")
def parent(data):
    """A one-epoch uni model of the dataset without the new class."""
    run_cli("train.py", "--data", data / "old", "--paradigm", "uni", "--epochs", "1", "--artifacts",
            data / "runs", *TINY_TRAIN)
    return data / "runs" / "uni" / "exp1" / "best.pt"


def toy_specs(binary: bool = False):
    """The toy spec (the parent's) and the toy spec plus 'glovebox' (the extension's, the new class
    last, as data.concat add writes it); `binary`: it gets its own multi-task sigmoid head, else it
    joins the softmax head."""
    new = json.loads(json.dumps(TOY))
    new["classes"]["glovebox"] = "glovebox"
    if binary:
        new["multitask"]["binary"].append("glovebox")
    return parse_spec(TOY, Path("/nonexistent/old")), parse_spec(new, Path("/nonexistent/new"))


def tiny_model(paradigm):
    torch.manual_seed(0)
    return build_model("resnet18", paradigm, "none", 16, 32, 24).eval()


@pytest.mark.parametrize("name,binary", [("uni", False), ("multi", False), ("multi", True)])
def test_growth_keeps_every_old_logit_bit_identical(name, binary):
    """Every old row is copied bit for bit, so the old logits are too, as long as the matrix
    product's kernel does not change with the head's width (CPU BLAS picks another summation order
    for some widths: on this machine 1, 3, 7 or 11 rows growing by one differ in the last bit)."""
    old_spec, new_spec = toy_specs(binary)
    old_p, new_p = build_paradigm(name, old_spec), build_paradigm(name, new_spec)
    parent = tiny_model(old_p)
    with torch.no_grad():  # trained-looking heads: rows and biases of different sizes
        for p in parent.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    means = {c: [(torch.rand(24, generator=g, dtype=torch.float64),) * 2 for _ in range(CONCAT + 1)]
             for c in new_spec.classes}
    child = grow(parent, old_p, new_p, {"backbone": "resnet18", "branch_mid": 16, "branch_out": 32, "hidden": 24},
                 means).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        for step in range(CONCAT + 1):
            old_z, new_z = old_p.split(parent(x, step)), new_p.split(child(x, step))
            for h in old_p.heads:
                grown = next(n for n in new_p.heads if n.name == h.name)
                cols = [grown.classes.index(c) for c in h.classes] if h.kind == "softmax" else [0]
                assert torch.equal(new_z[h.name][:, cols], old_z[h.name]), (step, h.name)
    assert sum(z.shape[1] for z in new_z.values()) == sum(z.shape[1] for z in old_z.values()) + 1
    if binary:  # the new sigmoid head: direction of the normalised means' difference, boundary half-way
        for k, cls in enumerate(child.classifiers):
            (u_neg, m_neg), (u_pos, m_pos) = means["normal"][k], means["glovebox"][k]
            w, b = cls.heads["glovebox"].weight[0].double(), cls.heads["glovebox"].bias[0].double()
            r = torch.cat([parent.classifiers[k].heads[h].weight for h in ("defect", "dirt", "bubble_wash")]).norm(dim=1)
            torch.testing.assert_close(w, (u_pos - u_neg) / (u_pos - u_neg).norm() * r.mean(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(w @ (m_pos + m_neg) / 2 + b, torch.zeros((), dtype=torch.float64),
                                       rtol=0, atol=1e-4)


def test_imprinted_rows_are_the_normalised_class_mean_at_the_old_rows_norm(tmp_path):
    """Row of the new class = (mean of the L2-normalised hidden features) / its norm x the mean
    norm of the old rows; bias = the mean of the old biases. Checked for the concat classifier
    against features from models.inference (the serving path), for the branch classifiers
    against their own hidden layers."""
    from data.images import load_rgb
    from data.loading import eval_transform
    from models.detectors import l2_normalise
    from models.extend import hidden
    from models.inference import predict_features
    old_spec, _ = toy_specs()
    _, spec = toy_specs()
    root = make_dataset(tmp_path / "d", {**spec.as_dict(), "splits": {"train": "train"}}, n=5, size=32)
    new_spec = load_spec(root)
    old_p, new_p = build_paradigm("uni", old_spec), build_paradigm("uni", new_spec)
    parent = tiny_model(old_p)
    items = new_spec.split_samples("train", ["glovebox"])
    tf = eval_transform(36, 32)
    child = grow(parent, old_p, new_p, {"backbone": "resnet18", "branch_mid": 16, "branch_out": 32, "hidden": 24},
                 class_means(parent, items, tf, 4, "cpu"))
    _, feats = predict_features(parent, items, tf, progress=False)
    images = torch.stack([tf(load_rgb(p)) for p, _ in items])
    j = new_p.heads[0].classes.index("glovebox")
    for k in range(CONCAT + 1):
        with torch.no_grad():
            f = feats if k == CONCAT else hidden(parent.eval(), images, k)
        u = l2_normalise(f.double()).mean(0)
        old_w, old_b = parent.classifiers[k].heads["classes"].weight, parent.classifiers[k].heads["classes"].bias
        expect = (u / u.norm() * old_w.norm(dim=1).mean()).float()
        head = child.classifiers[k].heads["classes"]
        torch.testing.assert_close(head.weight[j], expect, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(head.bias[j], old_b.mean())
        assert torch.equal(head.weight[[i for i in range(len(new_p.classes)) if i != j]], old_w)


def test_replay_draws_old_images_at_the_stated_ratio_and_uniformly():
    n_old, n_new, batch, batches = 90, 10, 16, 60
    drawn = list(ReplayBatches(n_old, n_new, batch, 0.75, batches, seed=3))
    assert len(drawn) == batches and all(len(b) == batch for b in drawn)
    assert all(sum(i < n_old for i in b) == 12 for b in drawn)  # round(0.75 x 16) old images in every batch
    # 60 x 12 = 8 passes over the 90 old images, 60 x 4 = 24 over the 10 new ones: each pass draws
    # every image once (uniform without replacement), so every image is drawn exactly that often
    # and each old class in proportion to its training images.
    assert Counter(i for b in drawn for i in b if i < n_old) == Counter({i: 8 for i in range(n_old)})
    assert Counter(i for b in drawn for i in b if i >= n_old) == Counter({i: 24 for i in range(n_old, 100)})
    first = drawn[0][:12] + drawn[1][:12]
    assert first != sorted(first)  # shuffled
    # the budget: --steps, --epochs over the new class at its share of a batch, else a fifth of a full retrain
    assert budget(Options(steps=7), 100, 4, 310) == 7 and budget(Options(epochs=1), 100, 4, 310) == 25
    assert budget(Options(), 100, 4, 310) == round(FULL_SHARE * 310) == 62
    assert budget(Options(share=0.1), 100, 4, 310) == 31
    with pytest.raises(ExtendError, match="--share 0: must be in"):
        budget(Options(share=0), 100, 4, 310)
    naive = list(ReplayBatches(n_old, n_new, batch, 0.0, 5))
    assert all(i >= n_old for b in naive for i in b)
    with pytest.raises(ExtendError, match="--replay 1.0"):
        ReplayBatches(n_old, n_new, batch, 1.0, 5)


def one_error_line(proc, *needles):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert str(n) in lines[0], lines[0]


def test_extension_errors(parent, data, tmp_path):
    # the class exists already: the model's own training data adds nothing
    one_error_line(run_cli("extend.py", "--checkpoint", parent, "--data", data / "old", check=False),
                   data / "old" / "dataset.yaml", "nothing to add")
    # data without the model's classes: only the new class and normal
    lacking = make_dataset(tmp_path / "lacking", {"classes": {"normal": "normal", NEW: NEW},
                                                  "splits": {"train": "train", "val": "val"}})
    one_error_line(run_cli("extend.py", "--checkpoint", parent, "--data", lacking, check=False),
                   lacking / "dataset.yaml", "lacks class(es) defect", "data.concat add")
    one_error_line(run_cli("extend.py", "--checkpoint", parent, "--data", data / "full", "--replay", "1",
                           check=False), "--replay 1.0")


def released(proc, bundles: Path):
    """The bundle extend.py released (the folder it printed), verified from a shell."""
    from pipeline.bundle import Bundle
    (folder,) = [p for p in bundles.iterdir() if not p.name.startswith(".")]
    assert f"wrote {folder} (" in proc.stdout
    assert json.loads(run_cli("-m", "pipeline.bundle", folder).stdout)["verified"] is True
    return Bundle.load(folder)


def test_extended_checkpoint_round_trips_and_is_released(parent, data, tmp_path):
    from data.images import content_hash
    out = tmp_path / "ext"
    proc = run_cli("extend.py", "--checkpoint", parent, "--data", data / "full", "--steps", "2", "--batch-size", "8",
                   "--workers", "0", "--no-progress", "--artifacts", out)
    child = out / "uni" / "exp1" / "best.pt"
    assert f"wrote {child}" in proc.stdout
    ck = checkpoints.load(child)  # the spec stored in the checkpoint
    assert list(ck.paradigm.classes) == load_spec(data / "old").class_names + [NEW]
    prov = ck.provenance()
    assert prov["parent"]["sha256"] == content_hash(parent) and prov["parent"]["classes"][-1] != NEW
    assert prov["added"]["classes"] == [NEW] and prov["added"]["tasks"] == {NEW: ["normal", NEW]}
    assert prov["added"]["batches"] == 2 and prov["added"]["optimizer_steps"] == 8
    assert checkpoints.load(child, load_spec(data / "full")).paradigm.heads == ck.paradigm.heads
    # released to ARTIFACTS/bundles: the new version, its OOD filter fitted on the new dataset
    bundle = released(proc, out / "bundles")
    assert bundle.manifest["provenance"]["checkpoint_sha256"] == content_hash(child)
    assert bundle.classes == list(ck.paradigm.classes) and bundle.manifest["release"]["data"] == str(data / "full")
    # the pipeline serves the new version: its rows can carry the new class, under the new bundle id
    db = tmp_path / "p.db"
    summary = json.loads(run_cli("-m", "pipeline", "predict", "--bundle", bundle.path, "--source", data / NEW,
                                 "--table", db, "--no-progress").stdout.strip().splitlines()[-1])
    assert summary["version"] == bundle.id and summary["images"] > 0 and not summary["error"]
    assert NEW in bundle.manifest["paradigm"]["labels"]
    # --no-release: the checkpoint only
    proc = run_cli("extend.py", "--checkpoint", parent, "--data", data / "full", "--steps", "0", "--workers", "0",
                   "--no-progress", "--no-release", "--artifacts", tmp_path / "plain")
    assert (tmp_path / "plain" / "uni" / "exp1" / "best.pt").is_file() and not (tmp_path / "plain" / "bundles").exists()


def test_a_task_centric_checkpoint_is_extended_by_one_more_task_model(data, tmp_path):
    """The task-centric way adds a model for the new task, trained with the parent's own flags;
    the parent is left as it was."""
    run_cli("train.py", "--data", data / "old", "--paradigm", "task", "--task", "defect", "--epochs", "1",
            "--artifacts", tmp_path / "runs", *TINY_TRAIN)
    parent_path = tmp_path / "runs" / "task_defect" / "exp1" / "best.pt"
    before = parent_path.read_bytes()
    proc = run_cli("extend.py", "--checkpoint", parent_path, "--data", data / "full", "--no-progress",
                   "--artifacts", tmp_path / "ext")
    child = tmp_path / "ext" / f"task_{NEW}" / "exp1" / "best.pt"
    assert str(child) in proc.stdout and child.is_file()
    assert released(proc, tmp_path / "ext" / "bundles").manifest["paradigm"]["task"] == NEW
    ck, parent = checkpoints.load(child), checkpoints.load(parent_path)
    assert ck.paradigm.name == "task" and ck.paradigm.task == NEW and list(ck.paradigm.classes) == ["normal", NEW]
    for k in ("backbone", "crop", "epochs", "lr", "branch_mid"):
        assert ck.args[k] == parent.args[k]
    assert parent_path.read_bytes() == before
    # it has the model's own task already: nothing to add
    one_error_line(run_cli("extend.py", "--checkpoint", parent_path, "--data", data / "old", check=False),
                   "nothing to add")


def test_train_heads_moves_the_heads_only(parent, data, tmp_path):
    """--train heads: every weight and BatchNorm statistic outside the heads is the parent's, the
    heads' old rows moved; the fine-tune is the parent's own training step (engine.train_one_epoch)."""
    from models.extend import extend
    child = extend(parent, load_spec(data / "full"), tmp_path / "uni" / "exp1",
                   Options(steps=3, train="heads", batch_size=8, workers=0, progress=False))
    old, new = checkpoints.load(parent).model.state_dict(), checkpoints.load(child).model.state_dict()
    body = [k for k in old if ".heads." not in k]
    assert body and all(torch.equal(old[k], new[k]) for k in body)  # weights and running statistics
    heads = [k for k in old if ".heads." in k and k.endswith("weight")]
    assert any(not torch.equal(old[k], new[k][:len(old[k])]) for k in heads)  # old rows fine-tuned
    added = checkpoints.read(child)["added"]
    assert added["batches"] == 3 and added["train"] == "heads" and added["skipped"] == []
