"""The run/ scripts as a new user meets them: --help on each, and run/reproduce.sh on a dataset of
one's own (tasks named other than SOFAR's, no 'multitask:' section), called from another folder with
relative paths."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_TRAIN, run_cli

RENAME = {"defect": "scratch", "dirt": "stain"}  # task names that no script knows
SCRIPTS = sorted(p.name for p in (ROOT / "run").glob("*.sh") if p.read_text().startswith("#!"))  # not the sourced


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help_without_starting_anything(tmp_path, script, flag):
    """--help prints the script's usage (every flag it reads itself) and exits at once: no .venv, no
    dataset, no training, in the repository (a copy of run/ here) or in the folder it is called from."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "run", copy / "run")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = sorted(copy.rglob("*"))
    start = time.monotonic()
    proc = subprocess.run(["sh", str(copy / "run" / script), "--data", "mine", "--trials", "1", flag], cwd=cwd,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 10
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: ") and f"sh run/{script}" in proc.stdout
    assert sorted(copy.rglob("*")) == before and not list(cwd.iterdir())
    body = (ROOT / "run" / script).read_text().split("help.sh", 1)[1]
    patterns = re.findall(r"^\s*(--[^\s)]*)\)", body, re.MULTILINE)  # the flags of its `case` branches
    for own in {p.removesuffix("=*") for alternatives in patterns for p in alternatives.split("|")}:
        assert own in proc.stdout, f"{script} --help does not name {own}"


@pytest.fixture(scope="module")
def own_data(tmp_path_factory) -> Path:
    """A tiny generated dataset whose tasks are renamed and whose multi-task section is gone."""
    from data.generate import generate
    out = tmp_path_factory.mktemp("own") / "own_data"
    # smaller than conftest's tiny_data: three train.py runs and one evaluate.py run use it
    generate(out, seed=0, size=32, train=2, val=1, test=2, ext=1, ood=2, multilabel=1, workers=1, montage=False)
    spec = yaml.safe_load((out / "dataset.yaml").read_text())
    spec["tasks"] = {RENAME[t]: pair for t, pair in spec["tasks"].items()}
    spec["external"] = {RENAME[t]: sets for t, sets in spec["external"].items()}
    del spec["multitask"]
    (out / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def reproduce(cwd: Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ROOT / "run" / "reproduce.sh"), *flags], cwd=cwd,
                          capture_output=True, text=True)


def test_reproduce_trains_every_task_of_a_foreign_spec_from_another_folder(own_data, tmp_path):
    shutil.copytree(own_data, tmp_path / "mine")
    proc = reproduce(tmp_path, "--data", "mine", "--artifacts", "art", "--out=res", "--trials", "2",
                     "--epochs", "1", *TINY_TRAIN)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no 'multitask:' section: skipping the multi-task model" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["bundles", "task_scratch", "task_stain", "uni"]
    for run in ("task_scratch", "task_stain", "uni"):
        assert sorted(p.name for p in (tmp_path / "art" / run).glob("exp*/best.pt")) == ["best.pt"] * 2
    report = (tmp_path / "res" / "REPORT.md").read_text()
    assert "scratch" in report and "stain" in report
    notebooks = ["test_ext_val.html", "test_multilabel.html", "test_ood.html", "test_sofar.html"]
    assert sorted(p.name for p in (tmp_path / "res" / "notebooks").glob("*.html")) == notebooks
    # by default the RQ3 ablation: the uni model once more with the other --mix setting, one trial
    variant = tmp_path / "art_variants" / "mix_cutmix" / "uni"
    assert [p.parent.name for p in variant.glob("exp*/best.pt")] == ["exp1"]
    assert yaml.safe_load((variant / "exp1" / "args.yaml").read_text())["mix"] == "cutmix"
    assert "## Ablation, efficiency-centric: OOD rejection (default scorer), calibration, top-2" in report
    assert "| mix_cutmix |" in report and "epochs_run=1 (2 trials); mix_cutmix: " in report
    assert ("mix=cutmix, mix_prob=0.5, augment=paper, zero_grad=none, bn_stats=step, jigsaw=cycle, epochs_run=1 "
            "(1 trial).") in report
    # then the release: the uni trial with the highest validation accuracy, beside the runs, its card
    # holding the report's figures
    best = released_best(proc.stdout, tmp_path / "art", tmp_path / "res")
    assert f"the release bundle is in {tmp_path / 'art' / 'bundles'}" in proc.stdout.splitlines()[-1]
    # trials of an earlier run in the same folder are named before training (here train.py then
    # refuses a bad flag: nothing trains)
    proc = subprocess.run(["sh", str(ROOT / "run" / "train_trials.sh"), "--paradigm", "uni", "--data", "mine",
                           "--artifacts", "art", "--trials", "1", "--jobs", "1", "--no-such-flag"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "unrecognized arguments: --no-such-flag" in proc.stderr
    assert f"note: {tmp_path / 'art' / 'uni'} also holds exp2 from an earlier run" in proc.stdout
    # run/ablations.sh beside those runs: plain fine-tuning at equal epochs and at equal wall-clock,
    # and the shift augmentation
    proc = subprocess.run(["sh", str(ROOT / "run" / "ablations.sh"), "--data", "mine", "--artifacts", "art",
                           "--out", "res", "--trials", "1", "--only", "plain,plain_time,aug_shift", "--epochs", "1",
                           *TINY_TRAIN],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "plain fine-tuning for the wall-clock of PMG:" in proc.stdout
    assert "bundles" not in proc.stderr and best.is_dir()  # the report passes the release folder over
    for name in ("plain", "plain_time"):
        args = yaml.safe_load((tmp_path / "art_variants" / name / "uni" / "exp1" / "args.yaml").read_text())
        assert args["method"] == "plain"
    args = yaml.safe_load((tmp_path / "art_variants" / "aug_shift" / "uni" / "exp1" / "args.yaml").read_text())
    assert args["augment"] == "shift" and args["method"] == "pmg"
    report = (tmp_path / "res" / "REPORT.md").read_text()
    assert "| plain |" in report and "| plain_time |" in report and "method=plain" in report
    assert "| aug_shift |" in report and "augment=shift" in report


def released_best(stdout: str, artifacts: Path, results: Path) -> Path:
    """The bundle reproduce.sh released: of the uni trial with the highest validation accuracy (the
    first on a tie), verified from a shell, its card holding every figure of the run's summary."""
    from data.images import content_hash
    from models import checkpoint as checkpoints
    accs = {p.parent.name: checkpoints.read(p)["best_val_acc"] for p in sorted(artifacts.glob("uni/exp*/best.pt"))}
    best = max(accs, key=accs.get)
    (bundle,) = (artifacts / "bundles").iterdir()
    assert f"by validation accuracy: {best} (" in stdout and f"wrote {bundle} (" in stdout
    assert json.loads(run_cli("-m", "pipeline.bundle", bundle).stdout)["verified"] is True
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["provenance"]["checkpoint_sha256"] == content_hash(artifacts / "uni" / best / "best.pt")
    card = (bundle / "MODEL_CARD.md").read_text()
    summary = json.loads((results / "summary.json").read_text())["runs"]["uni"]
    assert f"This checkpoint is trial {best};" in card and len(summary["figures"]) > 3
    for f in summary["figures"]:
        assert f"| {f['figure']} | {f['set']} | {f['value']:.3f} | [{f['lo']:.3f}, {f['hi']:.3f}] |" in card
    return bundle


def test_reproduce_checks_the_dataset_before_training(own_data, tmp_path):
    data = tmp_path / "mine"
    shutil.copytree(own_data, data)
    shutil.rmtree(data / "val" / "2_DIRT")
    proc = reproduce(tmp_path, "--data", "mine", "--artifacts", "art", *TINY_TRAIN)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "class 'dirt' has no images" in proc.stderr
    assert not (tmp_path / "art").exists() and "trial" not in proc.stdout


@pytest.mark.parametrize("script, flag, value", [("reproduce.sh", "--variants", "x"),
                                                ("train_trials.sh", "--trials", "0"),
                                                ("ablations.sh", "--trials", "-1")])
def test_a_bad_number_of_trials_stops_a_script_before_anything_trains(own_data, tmp_path, script, flag, value):
    proc = subprocess.run(["sh", str(ROOT / "run" / script), "--data", str(own_data), "--artifacts", "art",
                           f"{flag}={value}"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {flag} takes a number of trials of at least 1, not '{value}'\n"
    assert not (tmp_path / "art").exists()


def test_output_dir_is_the_old_name_of_artifacts(own_data, tmp_path):
    (tmp_path / "art" / "uni" / "exp2").mkdir(parents=True)
    (tmp_path / "art" / "uni" / "exp2" / "best.pt").touch()
    proc = subprocess.run(["sh", str(ROOT / "run" / "train_trials.sh"), "--paradigm", "uni", "--data", str(own_data),
                           "--output-dir=art", "--trials", "1", "--no-such-flag"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("note: --output-dir is now --artifacts\n")
    assert f"note: {tmp_path / 'art' / 'uni'} also holds exp2 from an earlier run" in proc.stdout
    assert "unrecognized arguments: --no-such-flag" in proc.stderr  # train.py got --artifacts


def test_extend_script_runs_the_hold_out_experiment_end_to_end(tmp_path):
    """run/extend.sh at its smallest: data with one class held out, the parent, the extension, the
    imprint-only and naive rows, a full retrain, each released, and EXTEND.md over them."""
    import os
    env = {**os.environ, "ROOT": "ext", "TRAIN_IMAGES": "2", "VAL_IMAGES": "1", "TEST_IMAGES": "2",
           "EXT_IMAGES": "1", "OOD_IMAGES": "2"}
    proc = subprocess.run(["sh", str(ROOT / "run" / "extend.sh"), "--epochs", "1", *TINY_TRAIN], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trial = tmp_path / "ext" / "exp1"
    times = dict(line.split("\t") for line in (trial / "times.tsv").read_text().splitlines())
    assert list(times) == ["before", "extended", "imprint", "naive", "full"]
    released = f"wrote {trial / 'full' / 'bundles'}/"
    assert proc.stdout.index(released) < proc.stdout.index("==== python -m evaluation.extension")  # timed with it
    for row in ("extended", "imprint", "naive", "full"):  # every row but the parent is released beside it
        assert len([b for b in (trial / row / "bundles").iterdir() if (b / "bundle.json").is_file()]) == 1, row
    report = (tmp_path / "ext" / "EXTEND.md").read_text()
    for row in ("before extension", "imprinted, no fine-tune", "extended: imprint + replay", "naive:", "full retrain"):
        assert sum(line.startswith(f"| {row}") for line in report.splitlines()) == 1, (row, report)
    assert "overall accuracy within 1 point of the full retrain" in report
    # REUSE=1 VARIANTS=...: the finished rows stay (same checkpoints, same times), the variant is added
    kept = {p: p.read_bytes() for p in trial.glob("*/**/best.pt")}
    proc = subprocess.run(["sh", str(ROOT / "run" / "extend.sh"), "--epochs", "1", *TINY_TRAIN], cwd=tmp_path,
                          env={**env, "REUSE": "1", "VARIANTS": "heads"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all(p.read_bytes() == b for p, b in kept.items())
    again = dict(line.split("\t") for line in (trial / "times.tsv").read_text().splitlines())
    assert list(again) == [*times, "heads"] and {k: again[k] for k in times} == times
    report = (tmp_path / "ext" / "EXTEND.md").read_text()
    assert "| variant heads: --train heads, --replay 0.75, --lr 0.002, share 0.2 |" in report
    proc = subprocess.run(["sh", str(ROOT / "run" / "extend.sh")], cwd=tmp_path,
                          env={**env, "VARIANTS": "wider"}, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown variant 'wider'" in proc.stderr
