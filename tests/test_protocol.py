"""The training protocol as the paper's, and trustworthy: the jigsaw's permutations, PyTorch-1
zero_grad semantics, the test-time transform, model selection, divergence."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

from engine import pmg_step
from models import build_model, build_paradigm
from models.jigsaw import jigsaw, random_cycle
from tests.builders import toy_spec
from tests.conftest import TINY_TRAIN, run_cli

SPEC = toy_spec()
SMALL = dict(branch_mid=16, branch_out=32, hidden=16)


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_jigsaw_cycle_leaves_no_block_in_place_and_is_seeded(n):
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        perm = random_cycle(n * n, g)
        assert sorted(perm.tolist()) == list(range(n * n))
        assert not (perm == torch.arange(n * n)).any()  # no fixed point
        # one single cycle: following it from 0 visits every block
        i, steps = int(perm[0]), 1
        while i != 0:
            i, steps = int(perm[i]), steps + 1
        assert steps == n * n
        seen.add(tuple(perm.tolist()))
    if n == 2:
        assert len(seen) == 6  # every one of the 3! cyclic orders of 4 blocks is drawn
    assert torch.equal(random_cycle(16, torch.Generator().manual_seed(5)), random_cycle(16, torch.Generator().manual_seed(5)))
    x = torch.arange(4 * 16 * 16, dtype=torch.float32).reshape(1, 4, 16, 16)
    assert not torch.equal(jigsaw(x, 2, torch.Generator().manual_seed(1)), x)


def test_zero_grad_zeros_equals_the_full_network_step_over_batches():
    """PyTorch-1 semantics: the step-skipping step equals the reference's full-network step in
    losses, parameters and momentum over several batches; with set_to_none the two differ."""
    p = build_paradigm("uni", SPEC)
    torch.manual_seed(0)
    model = build_model("resnet18", p, **SMALL)
    batches = [(torch.randn(4, 3, 48, 48), torch.tensor([[0], [1], [2], [3]])) for _ in range(3)]
    runs = {}
    for key, (naive, zg) in {"skip_zeros": (False, "zeros"), "full_zeros": (True, "zeros"),
                             "skip_none": (False, "none")}.items():
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.param_groups(0.01), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(3)
        losses = [pmg_step(m, p, x, y, opt, g, naive=naive, zero_grad=zg) for x, y in batches]
        momentum = [opt.state[q].get("momentum_buffer") for q in m.parameters()]
        runs[key] = (losses, [q.detach().clone() for q in m.parameters()], momentum)
    a, b = runs["skip_zeros"], runs["full_zeros"]
    for la, lb in zip(a[0], b[0]):
        assert la == pytest.approx(lb, rel=1e-4)
    for qa, qb in zip(a[1], b[1]):
        torch.testing.assert_close(qa, qb, rtol=1e-4, atol=1e-6)
    for ma, mb in zip(a[2], b[2]):
        assert (ma is None) == (mb is None)
        if ma is not None:
            torch.testing.assert_close(ma, mb, rtol=1e-4, atol=1e-6)
    # set_to_none skips parameters the step's loss does not reach: the runs part ways
    assert any(not torch.allclose(qa, qc) for qa, qc in zip(a[1], runs["skip_none"][1]))


def test_eval_transform_is_resize_then_centre_crop():
    from data.loading import IMAGENET_MEAN, IMAGENET_STD, eval_transform
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    for x in range(40):  # a white frame 5 px wide: outside the centre 30x30 of a 40x40 resize
        for y in range(40):
            if min(x, y, 39 - x, 39 - y) < 5:
                img.putpixel((x, y), (255, 255, 255))
    out = eval_transform(40, 30)(img)
    assert out.shape == (3, 30, 30)
    black = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, 0, 0], black)  # the frame was cropped away
    torch.testing.assert_close(out[:, 15, 15], black)


def test_model_selection_breaks_ties_by_val_loss_and_never_picks_nan():
    from train import better
    assert better({"val_acc": 1.0, "val_loss": 0.5}, None)
    assert better({"val_acc": 1.0, "val_loss": 0.2}, {"acc": 1.0, "loss": 0.5})
    assert not better({"val_acc": 1.0, "val_loss": 0.7}, {"acc": 1.0, "loss": 0.5})
    assert better({"val_acc": 0.9, "val_loss": 0.1}, {"acc": 0.8, "loss": 0.01})
    assert not better({"val_acc": 1.0, "val_loss": math.nan}, None)
    assert not better({"val_acc": 1.0, "val_loss": math.inf}, {"acc": 0.5, "loss": 1.0})


def test_divergence_stops_with_one_line_and_no_nan_model_is_written(tiny_data, tmp_path):
    proc = run_cli("train.py", "--data", tiny_data, "--paradigm", "task", "--task", "dirt", "--epochs", "2",
                   "--output-dir", tmp_path, *TINY_TRAIN, "--lr", "1e12", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: training diverged in epoch 1, batch")
    assert "--lr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("best.pt"))


def test_a_checkpoint_with_non_finite_weights_is_refused(artifacts, tiny_data, tmp_path):
    from models.checkpoint import CheckpointError, load, read, save
    state = read(artifacts / "uni" / "exp1" / "best.pt")
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="not finite"):
        load(tmp_path / "nan.pt")
    proc = run_cli("evaluate.py", "run", "--checkpoint", tmp_path / "nan.pt", "--data", tiny_data, "--out",
                   tmp_path / "r", "--device", "cpu", check=False)
    assert proc.returncode == 2 and "not finite" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("-m", "pipeline", "predict", "--checkpoint", tmp_path / "nan.pt", "--threshold", "0",
                   "--source", tiny_data / "test", "--table", tmp_path / "p.db", check=False)
    assert proc.returncode == 1 and "not finite" in proc.stderr and "Traceback" not in proc.stderr
