"""CutMix / mixup between images of different classes: soft targets that sum to 1 and match the
pasted area, partners of another class, the loss equal to cross-entropy with the soft target, and
train.py's flags."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.mixing import Mixer, cutmix, partners
from models.paradigms import Head, Paradigm
from tests.conftest import run_cli


def two_class_batch(n=8, size=20):
    """Class 0 images are all 0, class 1 images all 1: a pixel's value says where it came from."""
    targets = (torch.arange(n) % 2).view(-1, 1)
    return targets.view(-1, 1, 1, 1).float().expand(n, 3, size, size).clone(), targets


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_soft_targets_sum_to_one_and_match_the_pasted_area(seed):
    images, targets = two_class_batch()
    mixed = Mixer("cutmix", prob=1.0, alpha=1.0)(images, targets, torch.Generator().manual_seed(seed))
    assert 0 < mixed.lam <= 1
    assert (mixed.partner_targets != targets).all()  # every partner is of the other class
    for i in range(len(images)):
        own = targets[i].item()
        share_own = (mixed.images[i] == own).float().mean().item()  # pixels still from the image itself
        soft = torch.zeros(2)
        soft[own] += mixed.lam
        soft[mixed.partner_targets[i].item()] += 1 - mixed.lam
        assert soft.sum().item() == pytest.approx(1.0)
        assert soft[own].item() == pytest.approx(share_own, abs=1e-6)  # the target is the area


def test_cutmix_box_is_clipped_and_lam_recomputed():
    images, targets = two_class_batch(2, 10)
    out, lam = cutmix(images, torch.tensor([1, 0]), 0.0, torch.Generator().manual_seed(0))  # a full-size box
    assert lam == pytest.approx(1 - (out[0] == 1).float().mean().item())


def test_loss_is_cross_entropy_with_the_soft_target():
    paradigm = Paradigm("uni", None, ("a", "b", "c"), (Head("all", "softmax", ("a", "b", "c")),), "max_logit")
    g = torch.Generator().manual_seed(0)
    images, targets = torch.randn(6, 3, 16, 16, generator=g), torch.tensor([[0], [1], [2], [0], [1], [2]])
    mixed = Mixer("mixup", prob=1.0, alpha=0.4)(images, targets, g)
    logits = torch.randn(6, 3, generator=g)
    soft = mixed.lam * F.one_hot(targets[:, 0], 3) + (1 - mixed.lam) * F.one_hot(mixed.partner_targets[:, 0], 3)
    assert torch.allclose(soft.sum(1), torch.ones(6))
    assert mixed.loss(paradigm, logits, targets).item() == pytest.approx(F.cross_entropy(logits, soft.float()).item(),
                                                                           rel=1e-5)
    assert mixed.images.shape == images.shape and not torch.equal(mixed.images, images)


def test_partners_prefer_another_class_and_are_seeded():
    targets = torch.tensor([[0], [0], [0], [1]])
    p = partners(targets, torch.Generator().manual_seed(3))
    assert p[:3].tolist() == [3, 3, 3] and p[3].item() in (0, 1, 2)
    same = torch.tensor([[1], [1], [1]])  # no other class in the batch: a random partner
    assert len(partners(same, torch.Generator().manual_seed(0))) == 3
    a = Mixer("cutmix", 1.0)(*two_class_batch(), torch.Generator().manual_seed(5))
    b = Mixer("cutmix", 1.0)(*two_class_batch(), torch.Generator().manual_seed(5))
    assert torch.equal(a.images, b.images) and a.lam == b.lam


def test_unmixed_batches_are_untouched_and_draw_nothing():
    images, targets = two_class_batch()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    out = Mixer("none")(images, targets, g)
    assert out.images is images and out.lam == 1.0 and torch.equal(g.get_state(), state)
    assert Mixer("cutmix", prob=0.0)(images, targets, g).lam == 1.0
    with pytest.raises(ValueError, match="--mix-prob"):
        Mixer("cutmix", prob=1.5)
    with pytest.raises(ValueError, match="unknown --mix"):
        Mixer("mosaic")


def test_train_flags(tiny_data, tmp_path):
    flags = ["--data", tiny_data, "--backbone", "resnet18", "--pretrained", "none", "--resize", "40", "--crop", "32",
             "--epochs", "1", "--batch-size", "8", "--workers", "0", "--branch-mid", "8", "--branch-out", "16",
             "--hidden", "16", "--artifacts", tmp_path, "--no-progress"]
    run_cli("train.py", "--paradigm", "uni", "--mix", "cutmix", "--mix-prob", "1", *flags)
    args = yaml.safe_load((tmp_path / "uni" / "exp1" / "args.yaml").read_text())
    assert (args["mix"], args["mix_prob"], args["mix_alpha"]) == ("cutmix", 1.0, 1.0)
    assert (tmp_path / "uni" / "exp1" / "best.pt").is_file()
    proc = run_cli("train.py", "--paradigm", "uni", "--mix", "cutmix", "--mix-prob", "2", *flags, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error: --mix-prob")
