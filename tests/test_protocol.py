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
    losses, parameters and momentum over several batches; with set_to_none the two differ. With
    bn_stats="all" the BatchNorm running statistics are the full step's too; with "step" they are not."""
    p = build_paradigm("uni", SPEC)
    torch.manual_seed(0)
    model = build_model("resnet18", p, **SMALL)
    batches = [(torch.randn(4, 3, 48, 48), torch.tensor([[0], [1], [2], [3]])) for _ in range(3)]
    runs = {}
    for key, (naive, zg, bn) in {"skip_zeros": (False, "zeros", "step"), "full_zeros": (True, "zeros", "step"),
                                 "skip_none": (False, "none", "step"), "skip_all": (False, "zeros", "all")}.items():
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.param_groups(0.01), lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(3)
        losses = [pmg_step(m, p, x, y, opt, g, naive=naive, zero_grad=zg, bn_stats=bn) for x, y in batches]
        momentum = [opt.state[q].get("momentum_buffer") for q in m.parameters()]
        runs[key] = (losses, [q.detach().clone() for q in m.parameters()], momentum,
                     [b.detach().clone() for b in m.buffers()])
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
    # BN statistics: "step" leaves the deeper layers' without the jigsaw batches; "all" matches the full step
    c = runs["skip_all"]
    assert c[0] == a[0] and all(torch.equal(qa, qc) for qa, qc in zip(a[1], c[1]))  # training itself unchanged
    assert any(not torch.allclose(ba.float(), bb.float()) for ba, bb in zip(a[3], b[3]))
    for bc, bb in zip(c[3], b[3]):
        torch.testing.assert_close(bc.float(), bb.float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown bn_stats 'some'"):
        model(batches[0][0], step=0, bn_stats="some")


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
                   "--artifacts", tmp_path, *TINY_TRAIN, "--lr", "1e12", check=False)
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


def test_cosine_budget_schedule_reaches_its_minimum_at_the_last_step():
    from train import cosine
    f = cosine(10)
    assert f(0) == 1.0 and f(10) == pytest.approx(0.0, abs=1e-12) and f(5) == pytest.approx(0.5)
    assert all(f(t) > f(t + 1) for t in range(10))


def summary_rows(run_dir):
    import csv
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_step_budget_gives_every_paradigm_the_efficiency_centric_batches(tiny_data, tmp_path):
    """--budget steps: a task model (2 of 10 classes) takes as many batches as the uni model in
    --epochs; --budget epochs (the paper) gives it 1/5 of them."""
    flags = [*TINY_TRAIN, "--epochs", "1", "--artifacts", tmp_path]
    run_cli("train.py", "--data", tiny_data, "--paradigm", "uni", "--budget", "steps", *flags)
    run_cli("train.py", "--data", tiny_data, "--paradigm", "task", "--task", "dirt", "--budget", "steps", *flags)
    run_cli("train.py", "--data", tiny_data, "--paradigm", "task", "--task", "defect", "--budget", "epochs", *flags)
    batches = {run: sum(int(r["train_batches"]) for r in summary_rows(tmp_path / run / "exp1"))
               for run in ("uni", "task_dirt", "task_defect")}
    assert batches["uni"] == batches["task_dirt"] == 60 // 8  # 10 classes x 6 train images, batch 8
    assert batches["task_defect"] == 12 // 8
    rows = summary_rows(tmp_path / "task_dirt" / "exp1")
    assert len(rows) == 7 and float(rows[0]["lr"]) > float(rows[-1]["lr"]) > 0  # annealed over the budget


def test_plain_fine_tuning_is_one_step_per_batch():
    from engine import training_steps
    p = build_paradigm("uni", SPEC)
    torch.manual_seed(0)
    model = build_model("resnet18", p, **SMALL)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[0], [1], [2], [3]])
    calls = []
    step = opt.step
    opt.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
    losses = pmg_step(model, p, x, y, opt, torch.Generator().manual_seed(0), method="plain")
    assert len(losses) == 1 and len(calls) == 1
    assert training_steps("plain") == [(3, 1, 1.0)] and len(training_steps("pmg")) == 4
    with pytest.raises(ValueError, match="unknown method"):
        training_steps("jigsaw")


KILL = """
import os
import models.checkpoint as checkpoint
import train
save, append = checkpoint.save, train.append_summary
def killing_save(state, path):
    if state["epoch"] == 2 and path.name == {at!r}:
        os._exit(9)
    save(state, path)
def killing_append(run_dir, row):
    if row["epoch"] == 2 and {at!r} == "summary.csv":
        os._exit(9)
    append(run_dir, row)
checkpoint.save, train.append_summary = killing_save, killing_append
train.main(train.get_args_parser().parse_args({argv!r}))
"""


def crash_argv(tiny_data):
    return ["--data", str(tiny_data), "--paradigm", "task", "--task", "dirt", "--epochs", "2", *map(str, TINY_TRAIN)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    run_cli("train.py", *crash_argv(tiny_data), "--artifacts", out)
    return out


@pytest.mark.parametrize("at", ["best.pt", "summary.csv", "last.pt"])
def test_kill_at_any_write_of_an_epoch_then_resume_gives_the_uninterrupted_run(at, tiny_data, uninterrupted, tmp_path):
    """kill -9 just before each write of epoch 2 (of 2), then --resume: the same run folder as an
    uninterrupted run: summary rows, best.pt and last.pt (weights and epoch), no temp file."""
    from models.checkpoint import read
    argv = crash_argv(tiny_data)
    killed = run_cli("-c", KILL.format(at=at, argv=[*argv, "--artifacts", str(tmp_path / "k")]),
                     check=False)
    ref, run = uninterrupted / "task_dirt" / "exp1", tmp_path / "k" / "task_dirt" / "exp1"
    if killed.returncode == 0:
        pytest.skip(f"epoch 2 wrote no {at} in this run")  # best.pt only when val improved
    assert killed.returncode == 9
    run_cli("train.py", *argv, "--artifacts", tmp_path / "k", "--resume")
    drop = ("train_seconds", "train_images_per_s")
    rows = lambda d: [{k: v for k, v in r.items() if k not in drop} for r in summary_rows(d)]  # noqa: E731
    assert rows(run) == rows(ref)  # no epoch twice, none missing
    for name in ("best.pt", "last.pt"):
        a, b = read(ref / name), read(run / name)
        assert a["epoch"] == b["epoch"]
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not list(run.glob(".*.tmp"))


def test_exif_orientation_is_applied_by_the_one_decoder(tmp_path):
    from data.images import load_rgb
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    img.save(tmp_path / "sideways.jpg", exif=exif.tobytes(), quality=95)
    shown = load_rgb(tmp_path / "sideways.jpg")
    assert shown.size == (20, 40)  # upright: taller than wide
    r, g, b = shown.getpixel((10, 2))  # the stored left strip is now on top
    assert b > 200 and r < 60


def test_broken_checkpoints_and_a_resume_into_other_widths_give_one_line_errors(tiny_data, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    proc = run_cli("evaluate.py", "run", "--checkpoint", empty, "--data", tiny_data, "--out", tmp_path / "r",
                   "--device", "cpu", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and str(empty) in proc.stderr
    argv = ["--data", tiny_data, "--paradigm", "task", "--task", "dirt", "--epochs", "1", "--artifacts", tmp_path,
            *TINY_TRAIN]
    run_cli("train.py", *argv)
    proc = run_cli("train.py", *argv, "--branch-out", "48", "--epochs", "2", "--resume", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and "do not fit" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_malicious_or_broken_evaluation_cache_is_inferred_again(artifacts, tiny_data, tmp_path, capsys):
    import pickle
    from data.spec import load_spec
    from evaluation.inference import CachedPredictor
    from models.checkpoint import load

    class Payload:  # what a hostile cache file could carry: code that weights_only refuses to run
        def __reduce__(self):
            return (print, ("pwned",))
    ckpt = load(artifacts / "uni" / "exp1" / "best.pt", load_spec(tiny_data))
    items = load_spec(tiny_data).split_samples("test")[:4]
    pred = CachedPredictor(ckpt, tmp_path, progress=False)
    logits, _ = pred("test", items)
    (entry,) = list(tmp_path.glob("*.pt"))
    for content in (pickle.dumps(Payload()), b"\x80\x02truncated"):
        entry.write_bytes(content)
        again = CachedPredictor(ckpt, tmp_path, progress=False)
        z, _ = again("test", items)
        assert again.inferred == ["test"] and torch.equal(z, logits)
        err = capsys.readouterr()
        assert "unusable cache entry" in err.err and "pwned" not in err.out


def test_the_evaluation_cache_knows_a_checkpoint_by_its_content(artifacts, tiny_data, tmp_path):
    """A copied or touched checkpoint keeps its cached outputs; another checkpoint at the same path
    gets its own."""
    import os
    import shutil
    from data.images import content_hash
    from data.spec import load_spec
    from evaluation.inference import CachedPredictor
    from models.checkpoint import load
    spec = load_spec(tiny_data)
    items = spec.split_samples("test")[:4]
    first = tmp_path / "a" / "best.pt"
    first.parent.mkdir()
    shutil.copy(artifacts / "uni" / "exp1" / "best.pt", first)
    pred = CachedPredictor(load(first, spec), tmp_path / "cache", progress=False)
    logits, _ = pred("test", items)
    assert pred.inferred == ["test"] and pred.key == content_hash(first)[:16] == pred.sha256[:16]
    copy = tmp_path / "b" / "best.pt"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    os.utime(copy, (1, 1))
    again = CachedPredictor(load(copy, spec), tmp_path / "cache", progress=False)
    assert torch.equal(again("test", items)[0], logits) and again.inferred == []
    shutil.copy(artifacts / "multi" / "exp1" / "best.pt", copy)
    other = CachedPredictor(load(copy, spec), tmp_path / "cache", progress=False)
    other("test", items)
    assert other.inferred == ["test"] and len(list((tmp_path / "cache").glob("*.pt"))) == 2
