"""Releasing a run's best trial with its evaluation figures: `python -m models.release --best RUN_DIR
--report RESULTS` picks the trial by validation accuracy only, and its MODEL_CARD.md carries the
report's test and OOD figures with their intervals (evaluation/summary.py writes them)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models import checkpoint as checkpoints
from models.card import ReportError, model_card, report_figures
from tests.conftest import run_cli


def trial(run_dir: Path, name: str, source: Path, val_acc: float | None) -> Path:
    """RUN_DIR/<name>/best.pt: `source` with its recorded validation accuracy set to `val_acc`."""
    path = run_dir / name / "best.pt"
    path.parent.mkdir(parents=True)
    state = checkpoints.read(source)
    state["best_val_acc"] = val_acc
    checkpoints.save(state, path)
    return path


def test_best_trial_is_the_highest_validation_accuracy_ties_to_the_first(models, tmp_path):
    from models.release import ReleaseError, best_trial
    run = tmp_path / "uni"
    for name, acc in (("exp1", 0.5), ("exp10", 0.8), ("exp2", 0.8), ("exp3", None)):
        trial(run, name, models["uni"], acc)
    assert best_trial(run) == (run / "exp2" / "best.pt", 0.8)  # exp2 before exp10; exp3 records none
    (run / "exp2" / "best.pt").unlink()
    assert best_trial(run) == (run / "exp10" / "best.pt", 0.8)
    with pytest.raises(ReleaseError, match="no <trial>/best.pt that records a validation accuracy"):
        best_trial(tmp_path / "empty")


def summary_file(folder: Path, **runs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "d", "interval": "95 % interval", "runs": runs}))
    return folder


def test_a_report_that_does_not_evaluate_the_checkpoint_is_refused(tmp_path):
    run = {"trials": {"exp1": "a" * 64, "exp2": "b" * 64}, "default_scorers": {"exp1": "knn", "exp2": "vim"},
           "figures": [{"figure": "accuracy", "set": "test", "value": 0.9, "lo": 0.8, "hi": 0.95, "trials": 2}]}
    results = summary_file(tmp_path / "results", uni=run)
    got = report_figures(results, "uni", "b" * 64, "d")
    assert (got["trial"], got["trials"], got["default"], got["figures"]) == ("exp2", 2, "vim", run["figures"])
    assert report_figures(results / "summary.json", "uni", "b" * 64, "d") == got  # the folder or the file
    for args, message in [(("uni", "c" * 64, "d"), "none of the uni trials it reports (exp1, exp2) is this checkpoint"),
                          (("multi", "a" * 64, "d"), "has no run 'multi' (it has uni)"),
                          (("uni", "a" * 64, "other"), "reports dataset 'd', but the release is on 'other'")]:
        with pytest.raises(ReportError, match=message.replace("(", r"\(").replace(")", r"\)")):
            report_figures(results, *args)
    with pytest.raises(ReportError, match="not found; give the folder evaluate.py report wrote"):
        report_figures(tmp_path / "nowhere", "uni", "a" * 64, "d")
    (results / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="not an evaluation summary"):
        report_figures(results, "uni", "a" * 64, "d")


def test_release_of_the_best_trial_carries_the_reports_figures(models, tiny_data, tmp_path):
    from data.images import content_hash
    from data.spec import load_spec
    from evaluation.report import evaluate_all
    from evaluation.summary import write_summary
    from pipeline.bundle import Bundle
    spec = load_spec(tiny_data)
    artifacts = tmp_path / "artifacts"
    trial(artifacts / "uni", "exp1", models["uni"], 0.25)
    best = trial(artifacts / "uni", "exp2", models["uni"], 0.75)  # other content: its own trial
    results, _ = evaluate_all(artifacts, spec, tmp_path / "cache", progress=False)
    (tmp_path / "results").mkdir()
    summary = json.loads(write_summary(results, spec, tmp_path / "results").read_text())["runs"]["uni"]
    proc = run_cli("-m", "models.release", "--best", artifacts / "uni", "--data", tiny_data,
                   "--report", tmp_path / "results", "--out", artifacts / "bundles")
    assert proc.stdout.startswith(f"best trial of {artifacts / 'uni'} by validation accuracy: exp2 (0.7500)\nwrote ")
    folder = Path(proc.stdout.splitlines()[1].split()[1])
    assert json.loads(run_cli("-m", "pipeline.bundle", folder).stdout)["verified"] is True
    bundle = Bundle.load(folder)
    assert bundle.manifest["provenance"]["checkpoint_sha256"] == content_hash(best)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "This checkpoint is trial exp2" in card and "the uni run, 2 trial(s)," in card
    assert "| figure | image set | mean | 95 % interval |" in card
    from evaluation.summary import ECE_AFTER, ECE_BEFORE
    assert summary["figures"] and {f["figure"] for f in summary["figures"]} >= {"accuracy", ECE_BEFORE, ECE_AFTER,
                                                                                 "OOD AUROC, default scorer"}
    for f in summary["figures"]:
        assert f"| {f['figure']} | {f['set']} | {f['value']:.3f} | [{f['lo']:.3f}, {f['hi']:.3f}] |" in card
    # without a report the card says where the figures are; the same manifest, no table
    plain = model_card(bundle.manifest)
    assert "`python -m models.release\n--report RESULTS` puts them here" in plain and "95 % interval |" not in plain
    # a report of other checkpoints: one error line, nothing released
    shutil.rmtree(artifacts / "bundles")
    proc = run_cli("-m", "models.release", models["uni"], "--data", tiny_data, "--report", tmp_path / "results",
                   "--out", artifacts / "bundles", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "is this checkpoint" in proc.stderr and not (artifacts / "bundles").exists()
    proc = run_cli("-m", "models.release", models["uni"], "--best", artifacts / "uni", check=False)
    assert proc.returncode == 2 and "give a checkpoint or --best RUN_DIR (one of them)" in proc.stderr
