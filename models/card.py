"""A release bundle's MODEL_CARD.md, and the evaluation figures it carries.

`model_card(manifest, figures)` writes the card from bundle.json's content (models/release.py).
With `figures` (`report_figures`: the run's entry of the evaluation report's summary.json, which
`evaluate.py report` writes, evaluation/summary.py) the card holds the run's test and OOD figures,
each the mean over its trials with a 95 % interval; without, it says where those figures are.
"""
from __future__ import annotations

import json
from pathlib import Path

SUMMARY = "summary.json"  # in the report's folder, beside REPORT.md
STAND_IN = "sofar-embedded"  # the name data.generate gives the procedurally generated dataset


class ReportError(ValueError):
    """An evaluation report that cannot give this checkpoint's figures; the message says why."""


def report_figures(report: str | Path, run: str, checkpoint_sha256: str, dataset: str) -> dict:
    """The figures of `run` in the report (its folder or its summary.json), checked to be of this
    checkpoint (one of the run's trials, by content hash) and this dataset: {dataset, interval,
    run, trial, trials, default, figures}."""
    file = Path(report)
    file = file / SUMMARY if file.is_dir() else file
    try:
        summary = json.loads(file.read_text())
        runs = summary["runs"]
    except FileNotFoundError:
        raise ReportError(f"{file}: not found; give the folder evaluate.py report wrote (its --out)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{file}: not an evaluation summary ({type(e).__name__}: {e})") from None
    if summary.get("dataset") != dataset:
        raise ReportError(f"{file}: reports dataset '{summary.get('dataset')}', but the release is on '{dataset}'")
    if run not in runs:
        raise ReportError(f"{file}: has no run '{run}' (it has {', '.join(runs) or 'none'})")
    trials = runs[run]["trials"]
    trial = next((t for t, sha in trials.items() if sha == checkpoint_sha256), None)
    if trial is None:
        raise ReportError(f"{file}: none of the {run} trials it reports ({', '.join(trials)}) is this checkpoint "
                          f"(sha256 {checkpoint_sha256[:12]}); evaluate its run again (evaluate.py report)")
    return {"dataset": dataset, "interval": summary["interval"], "run": run, "trial": trial, "trials": len(trials),
            "default": runs[run]["default_scorers"].get(trial), "figures": runs[run]["figures"]}


def figures_section(f: dict | None) -> str:
    if f is None:
        return ("Test-set and reported-OOD figures, with their intervals, are in the run's evaluation report\n"
                "(`python evaluate.py report`: REPORT.md and summary.json), not here; `python -m models.release\n"
                "--report RESULTS` puts them here.")
    rows = "\n".join(f"| {r['figure']} | {r['set']} | {r['value']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] |"
                     for r in f["figures"])
    return f"""From the run's evaluation report (`evaluate.py report`, summary.json): the {f['run']} run, {f['trials']} trial(s),
on the test split and the reported OOD sets of `{f['dataset']}`. Each value is the mean over the
trials with its {f['interval']}. This checkpoint is trial {f['trial']};
the OOD AUROC is of each trial's default scorer (this trial's: {f['default']}).

| figure | image set | mean | 95 % interval |
|---|---|---|---|
{rows}"""


def calibration_section(c: dict | None) -> str:
    """What the served scores are: temperature-scaled (bundle.json `calibration`) or as trained."""
    if not c:
        return "None: the top-2 scores are the model's probabilities as training left them."
    temps = ", ".join(f"{head} {t:.3g}" for head, t in c["temperatures"].items())
    before, after = c["val"]["before"], c["val"]["after"]
    return f"""The top-2 scores are temperature-scaled: each head's logits are divided by its temperature
({temps}), fitted on the {sum(c['n'].values())} labelled decisions of the {c['split']} split by minimum
negative log-likelihood (never on test); {c['fitted']}. A temperature changes no label and no OOD score.

| on val | ECE (15 bins) | NLL | Brier |
|---|---|---|---|
| before | {before['ece']:.3f} | {before['nll']:.3f} | {before['brier']:.3f} |
| after | {after['ece']:.3f} | {after['nll']:.3f} | {after['brier']:.3f} |

The val figures are those the temperature was chosen on: the test ECE with its interval is below
(and in the evaluation report's Table 6)."""


def tasks_section(tasks: dict | None) -> str:
    """How each binary task is answered (bundle.json `tasks`, models/task_rules.py)."""
    if not tasks:
        return "Not recorded (a bundle released before task rules existed): read the top-2 labels."
    rows = "\n".join(f"| {t} | {' v '.join(r['classes'])} | **{r['rule']}** | {r.get('threshold', 0.0):+.3f} | "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items())
                     + f" | {', '.join(f'{n} ({k})' for n, k in r['sets'].items())} |" for t, r in tasks.items())
    return f"""Each row's `task_answers` says, per task, which of its two classes the model calls the image
(pipeline/README.md). The rule was chosen on validation images only (models/task_rules.py): `argmax`,
the head's own decision (over every class); `restricted`, the positive class beats the task's negative
class; `threshold`, their logit margin beats the threshold fitted on the same validation images
(its accuracy there is cross-validated).

| task | classes | rule | fitted threshold | mean val accuracy per rule | chosen on (images) |
|---|---|---|---|---|---|
{rows}"""


def model_card(m: dict, figures: dict | None = None) -> str:
    p, o, v = m["paradigm"], m["ood"], m["validation"]
    stand_in = m["provenance"]["spec"] == STAND_IN
    heads = "; ".join(f"{name} ({kind}: {', '.join(classes)})" for name, kind, classes in p["heads"])
    accs = "\n".join(f"| {k} | {val:.3f} |" for k, val in v.items() if k.startswith("val_acc") and val is not None)
    sel = "\n".join(f"| {n}{' (default)' if n == o['default'] else ''} | {s['auroc']:.3f} | {s['fpr95']:.3f} |"
                    for n, s in sorted(o["selection"].items(), key=lambda kv: -kv[1]["auroc"]))
    how = (f"the rule: {o['rule']}; mean over the ood_val sets {', '.join(o['ood_val'])}" if o["selection"]
           else f"no ood_val sets in the dataset: the paper's score for this design, {o['paper_scorer']}")
    data = (f"the procedurally generated stand-in dataset `{STAND_IN}` (SOFAR-Image is private): every "
            f"figure here is a figure about the stand-in, not about real photos" if stand_in
            else f"the dataset `{m['provenance']['spec']}`")
    return f"""# {m['name']}: {p['title']} classifier with an OOD filter

## Intended use
Sorting photos from a car-sharing fleet into {', '.join(p['classes'])}, after an out-of-distribution
(OOD) filter rejects photos that belong to none of them; each accepted photo gets its top-2 labels
({m['top2']['rule']} rule). Heads: {heads}. Not for photos of other domains, nor as the sole judge of
damage: a person reviews what the table flags.

## Data
Trained on {data}; dataset.yaml sha256 {m['provenance']['spec_sha256'][:16]}. The OOD detectors were
fitted on its train split ({o['n_train']} images); the scorer and threshold were chosen on its val
split and `ood_val` sets, never on the test or reported OOD sets.

## Figures available at release
Validation accuracy of the checkpoint ({v.get('val_images')} val images):

| measure | value |
|---|---|
{accs}

OOD scorer: **{o['default']}** ({how}); threshold {o['thresholds'][o['default']]:.4g}, which accepts
{o['val_accepted']:.1%} of the {o['n_val']} val images (stated TPR {o['tpr']:.0%}).

| scorer | mean ood_val AUROC | mean ood_val FPR@95 |
|---|---|---|
{sel or '| (no ood_val sets) | | |'}

## Calibration
{calibration_section(m.get("calibration"))}

## Task answers
{tasks_section(m.get("tasks"))}

## Test and OOD figures
{figures_section(figures)}

## Known limits
- Content-poor photos (far too dark, shaken, a finger over the lens) pass the OOD filter: every
  detector scores them close to the classes, so they reach the classifier and get labels.
- The filter knows only the OOD kinds of its ood_val sets; a new kind of irrelevant photo may pass.
- {'These numbers are on the stand-in dataset: they say the system works end to end, not how well it sorts real photos.' if stand_in else 'Figures are from one training run; the report gives their spread over trials.'}
- The exported graph ({m['export']['exporter']} exporter, opset {m['export']['opset']}) expects {m['transform']['crop'][0]} px crops
  normalised as bundle.json's `transform` says.
"""
