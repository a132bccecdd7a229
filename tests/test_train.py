"""train.py and run/ through their real command lines on a tiny generated dataset."""
from __future__ import annotations

import csv
import io
import os
import subprocess

import pytest
import torch
import yaml

from models import checkpoint
from tests.conftest import ROOT, TINY_TRAIN, run_cli


@pytest.mark.parametrize("flags,run", [
    (["--paradigm", "uni"], "uni"),
    (["--paradigm", "task", "--task", "defect"], "task_defect"),
    (["--paradigm", "task", "--task", "dirt", "--augment", "shift"], "task_dirt"),
    (["--paradigm", "multi"], "multi"),
])
def test_one_epoch_per_paradigm(tiny_data, tmp_path, flags, run):
    proc = run_cli("train.py", "--data", tiny_data, *flags, "--epochs", "1", "--artifacts", tmp_path, *TINY_TRAIN)
    assert "profile quick" in proc.stdout and "epoch 1/1" in proc.stdout
    run_dir = tmp_path / run / "exp1"
    rows = list(csv.DictReader(open(run_dir / "summary.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_acc"]) <= 1.0
    if run == "uni":  # a fresh run over the same folder (--overwrite) replaces the old run's rows, never adds
        # to them (--output-dir: the old name of --artifacts, still taken, with a note)
        proc = run_cli("train.py", "--data", tiny_data, *flags, "--epochs", "1", "--output-dir", tmp_path,
                       "--overwrite", *TINY_TRAIN)
        assert proc.stderr.count("note: --output-dir is now --artifacts\n") == 1
        assert [r["epoch"] for r in csv.DictReader(open(run_dir / "summary.csv"))] == ["1"]
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert args["paradigm"] == flags[1] and args["crop"] == 32 and args["seed"] == 0
    assert args["artifacts"] == str(tmp_path) and "output_dir" not in args
    assert args["augment"] == ("shift" if run == "task_dirt" else "paper")
    ckpt = checkpoint.read(run_dir / "best.pt")
    spec_classes = list(ckpt["spec"]["classes"])
    expected = {"uni": spec_classes, "task_defect": ["normal", "defect"], "task_dirt": ["normal", "dirt"],
                "multi": spec_classes}[run]
    assert ckpt["classes"] == expected and ckpt["epoch"] == 1
    assert ckpt["val"]["val_images"] == 3 * len(expected)  # val split, never test
    if run == "multi":
        assert [h[0] for h in ckpt["heads"]] == ["defect", "dirt", "bubble_wash", "others"]
        assert any(".heads.others." in k for k in ckpt["model"])


def test_every_augmentation_gives_the_crop_and_changes_the_pixels():
    import numpy as np
    from PIL import Image
    from data.loading import AUGMENTS, train_transform
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8))

    def draws(augment):
        torch.manual_seed(0)
        return torch.stack([train_transform(36, 32, augment)(image) for _ in range(8)])

    paper = draws("paper")
    for augment in AUGMENTS:
        x = draws(augment)
        assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
        assert augment == "paper" or not torch.equal(x, paper), augment
    with pytest.raises(ValueError, match="unknown augmentation 'fog'.*augmix"):
        train_transform(36, 32, "fog")


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_data, tmp_path):
    common = ["--data", tiny_data, "--paradigm", "multi", "--epochs", "2", *TINY_TRAIN]
    run_cli("train.py", *common, "--artifacts", tmp_path / "a", "--keep-epochs")
    a = tmp_path / "a" / "multi" / "exp1"
    # The interrupted run: its last checkpoint is the one written after epoch 1.
    b = tmp_path / "b" / "multi" / "exp1"
    b.mkdir(parents=True)
    (b / "last.pt").write_bytes((a / "epoch_1.pt").read_bytes())
    proc = run_cli("train.py", *common, "--artifacts", tmp_path / "b", "--resume")
    assert "resumed from" in proc.stdout and "epoch 1/2" not in proc.stdout
    final_a, final_b = checkpoint.read(a / "last.pt"), checkpoint.read(b / "last.pt")
    assert final_b["epoch"] == 2
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
    assert final_a["optimizer"]["param_groups"][0]["lr"] == final_b["optimizer"]["param_groups"][0]["lr"]


def test_resume_refuses_a_checkpoint_of_another_model(tiny_data, tmp_path):
    run_cli("train.py", "--data", tiny_data, "--paradigm", "task", "--task", "dirt", "--epochs", "1",
            "--artifacts", tmp_path, *TINY_TRAIN)
    ckpt = tmp_path / "task_dirt" / "exp1" / "last.pt"
    proc = run_cli("train.py", "--data", tiny_data, "--paradigm", "uni", "--epochs", "1", "--artifacts", tmp_path,
                   "--resume", ckpt, *TINY_TRAIN, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "trained as task dirt" in proc.stderr and str(ckpt) in proc.stderr
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint written by train.py"):
        checkpoint.read(junk)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save killed half-way through writing leaves the previous checkpoint whole, and no temp file."""
    path = tmp_path / "last.pt"
    checkpoint.save({"format": checkpoint.FORMAT, "model": {"w": torch.ones(1)}, "epoch": 1}, path)
    real_save = torch.save

    def killed_mid_write(obj, f, *args, **kwargs):
        whole = io.BytesIO()
        real_save(obj, whole, *args, **kwargs)
        half = whole.getvalue()[: len(whole.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                out.write(half)
        else:
            f.write(half)
            f.flush()
        raise KeyboardInterrupt  # the process dies here, its file half written

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"format": checkpoint.FORMAT, "model": {"w": torch.zeros(1)}, "epoch": 2}, path)
    assert checkpoint.read(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_run_script_trains_n_trials_with_different_seeds(tiny_data, tmp_path):
    proc = subprocess.run(["sh", "run/pmg_baseline_dirt.sh", "--trials", "2", "--data", str(tiny_data),
                           "--epochs", "1", "--artifacts", str(tmp_path), *TINY_TRAIN],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "trial 2/2 (seed 1)" in proc.stdout
    seeds = [yaml.safe_load((tmp_path / "task_dirt" / t / "args.yaml").read_text())["seed"] for t in ("exp1", "exp2")]
    assert seeds == [0, 1]


@pytest.mark.parametrize("cli", [["train.py"], ["extend.py"], ["evaluate.py", "report"], ["-m", "pipeline", "predict"],
                                 ["-m", "models.release"]])
def test_every_cli_names_the_runs_folder_artifacts_and_defaults_to_device_auto(cli):
    """One name per concept: --artifacts is the folder of training runs (--output-dir, its old name,
    is taken but not shown) and --device defaults to auto, in every command that has them."""
    text = " ".join(run_cli(*cli, "--help").stdout.split())  # argparse wraps help text
    if cli[0] in ("train.py", "extend.py", "evaluate.py"):
        assert "--artifacts" in text and "--output-dir" not in text
    if cli[0] == "evaluate.py":  # its defaults are not in its help text
        from evaluate import get_args_parser
        assert get_args_parser().parse_args(cli[1:]).device == "auto"
    else:
        assert "--device" in text and ("default: auto" in text or "default auto" in text), text


def test_run_script_rejects_a_folder_without_spec(tmp_path):
    proc = subprocess.run(["sh", "run/pmg_uni.sh", "--data", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "dataset.yaml not found" in proc.stderr


def test_torchrun_two_processes_on_cpu(tiny_data, tmp_path):
    """The multi-GPU path (DDP through torchrun), exercised with the gloo backend on CPU."""
    torchrun = ROOT / ".venv" / "bin" / "torchrun"
    cmd = [str(torchrun)] if torchrun.exists() else [__import__("sys").executable, "-m", "torch.distributed.run"]
    proc = subprocess.run([*cmd, "--nproc_per_node", "2", "train.py", "--data", str(tiny_data), "--paradigm", "multi",
                           "--epochs", "1", "--artifacts", str(tmp_path), *TINY_TRAIN],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "x2" in proc.stdout
    assert checkpoint.read(tmp_path / "multi" / "exp1" / "best.pt")["epoch"] == 1
