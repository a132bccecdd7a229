"""`evaluate.py report`: evaluate every trial under an artifacts folder and write results/.

Layout read: ARTIFACTS/<run>/<trial>/best.pt with run = uni | multi | task_<task> (a folder of
release bundles there is passed over). Written: REPORT.md, one CSV per table, per-trial JSON under
runs/, each run's figures with intervals in summary.json (evaluation/summary.py), and the figures of
evaluation.figures (draw_figures); the tables themselves are built in evaluation/paper_tables.py.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import provenance
from data.spec import Spec
from evaluation import claims, efficiency
from evaluation.checkpoint import evaluate_checkpoint, to_json
from models import checkpoint as checkpoints
from models.checkpoint import CheckpointError
from models.paradigms import spec_paradigms
from evaluation.paper_tables import make_tables, task_run
from evaluation.summary import write_summary
from pipeline.bundle import MANIFEST as BUNDLE_MANIFEST
from utils import trial_jobs


def run_names(spec: Spec) -> list[str]:
    return [p.run_name for p in spec_paradigms(spec)]


def find_checkpoints(artifacts: Path, spec: Spec) -> dict[str, dict[str, Path]]:
    artifacts = Path(artifacts)
    if not artifacts.is_dir():
        raise CheckpointError(f"{artifacts}: artifacts folder not found; train first (sh run/reproduce.sh)")
    known = run_names(spec)
    found: dict[str, dict[str, Path]] = {}
    for run_dir in sorted(p for p in artifacts.iterdir() if p.is_dir()):
        if (run_dir / "EXTEND.md").is_file():  # run/extend.sh's experiment: a section, not a run
            continue
        if any(run_dir.glob(f"*/{BUNDLE_MANIFEST}")):  # release bundles (models/release.py), not a run
            continue
        if run_dir.name not in known:
            print(f"warning: {run_dir}: not a run of {spec.file} ({', '.join(known)}); ignored", file=sys.stderr)
            continue
        trials = {t.name: t / "best.pt" for t in sorted(run_dir.iterdir()) if (t / "best.pt").is_file()}
        if trials:
            found[run_dir.name] = trials
    if not found:
        raise CheckpointError(f"{artifacts}: no <run>/<trial>/best.pt (run = {', '.join(known)}); train first")
    return {r: found[r] for r in known if r in found}


def evaluate_all(artifacts, spec: Spec, cache_dir, *, device="cpu", batch_size=32, progress=True, workers=0):
    """({run: {trial: (metrics, raw)}}, {run: models.checkpoint.Checkpoint of its first trial}) for every
    ARTIFACTS/<run>/<trial>/best.pt; each image set is inferred once per checkpoint (cached)."""
    return evaluate_runs({"": artifacts}, spec, cache_dir, device=device, batch_size=batch_size, progress=progress,
                         workers=workers)[""]


def evaluate_runs(folders: dict[str, str | Path], spec: Spec, cache_dir, *, device="cpu", batch_size=32,
                  progress=True, workers=0) -> dict[str, tuple[dict, dict]]:
    """{name: evaluate_all's pair} for each artifacts folder, every checkpoint of every folder in one
    pool of processes, as many at a time as training runs (utils.trial_jobs: one per core and 4 in all
    on a CPU, the cores shared out; one on a GPU): a checkpoint's small forward passes keep one core
    busier than two, so two checkpoints at a time on one thread each finish sooner than one on two."""
    jobs, out = [], {}
    for name, folder in folders.items():
        results, first = {}, {}
        for run, trials in find_checkpoints(Path(folder), spec).items():
            results[run] = {}
            for trial, path in trials.items():
                ckpt = checkpoints.load(path, spec, device)
                if ckpt.paradigm.run_name != run:
                    raise CheckpointError(f"{path}: a {ckpt.paradigm.run_name} checkpoint in the folder of run '{run}'; "
                                          f"move it to {Path(folder) / ckpt.paradigm.run_name}")
                first.setdefault(run, ckpt)
                jobs.append((results[run], trial, path, ckpt))
        out[name] = (results, first)
    n, threads = trial_jobs(len(jobs), cuda=str(device) != "cpu")
    kwargs = dict(device=device, batch_size=batch_size, cache_dir=cache_dir, workers=workers)
    if n == 1:
        for into, trial, path, ckpt in jobs:
            into[trial] = evaluate_checkpoint(path, spec, progress=progress, loaded=ckpt, **kwargs)
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from tqdm import tqdm
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_threads,
                             initargs=(threads,)) as pool:
        futures = [(into, trial, pool.submit(evaluate_checkpoint, path, spec, progress=False, **kwargs))
                   for into, trial, path, _ in jobs]
        for into, trial, f in tqdm(futures, desc=f"evaluate ({n} processes)", unit="checkpoint", disable=not progress):
            into[trial] = f.result()
    return out


def _threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def build_report(artifacts, spec: Spec, out, *, device="cpu", batch_size=32, cache_dir=None, progress=True,
                 efficiency_images: int = 64, workers: int = 0, variants: dict[str, str] | None = None,
                 extension: str | Path | None = None) -> Path:
    """`variants`: {name: artifacts folder} of the same runs trained with other flags (ablation tables);
    `extension`: a run/extend.sh folder whose EXTEND.md becomes a section."""
    from evaluation.ablation import ablation_tables
    from evaluation.robustness import lever_table
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluated = evaluate_runs({"": artifacts, **{f"variant {k}": v for k, v in (variants or {}).items()}}, spec,
                              cache_dir or out / "cache", device=device, batch_size=batch_size, progress=progress,
                              workers=workers)
    results, first_models = evaluated[""]
    variant_results = {name: evaluated[f"variant {name}"][0] for name in (variants or {})}
    for folder, res in [(out / "runs", results), *((out / "runs" / "variants" / n, r) for n, r in variant_results.items())]:
        for run, trials in res.items():
            (folder / run).mkdir(parents=True, exist_ok=True)
            for trial, (metrics_, _) in trials.items():
                (folder / run / f"{trial}.json").write_text(to_json(metrics_))
    write_summary(results, spec, out)
    header = describe(results, spec)
    tables = make_tables(results, spec) + ablation_tables(results, variant_results, spec)
    levers = lever_table(results, variant_results, spec)
    if levers is not None:
        tables.append(("robustness_levers", levers))
    eff = efficiency.table7(first_models, spec, device, efficiency_images, batch_size)
    if eff is not None:
        tables.append(eff)
    figures = draw_figures(results, spec, out)
    claim_rows = judge_claims(results, spec, eff)
    lines = [f"# Evaluation report: {spec.name}", "", header, "",
             *provenance_header(results, variant_results, device), "",
             "## The paper's claims", "",
             "Each verdict comes from this run's numbers by the rule in its row: 95 % paired bootstrap intervals "
             "over the test images (trials paired, replicates pooled). Also in `claims.csv`.", "",
             claims.markdown(claim_rows), "",
             "Every number below is mean ± std (population std) over the trials. Bold in Tables 1, 2 and 4: the "
             "best paradigm where its paired interval against each other paradigm excludes 0; elsewhere the best "
             "mean. "
             "Per-trial metrics: `runs/<run>/<trial>.json`; each run's test and OOD figures with 95 % "
             "intervals (what a release's model card carries): `summary.json`.", ""]
    with open(out / "claims.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(claim_rows[0]))
        w.writeheader()
        w.writerows(claim_rows)
    for key, table in tables:
        lines += [f"## {table.title}", "", f"*{header}*", "", table.markdown(), ""]
        if table.note:
            lines += [table.note, ""]
        table.write_csv(out / f"{key}.csv")
    if extension is not None:
        from evaluation.extension import report_section
        lines += report_section(Path(extension))
    lines += ["## Figures", "", "Each PNG has a vector copy (SVG) beside it.", ""] + \
        [f"![{f.stem}]({f.name})" for f in figures] + [""]
    report = out / "REPORT.md"
    report.write_text("\n".join(lines))
    return report


def judge_claims(results, spec: Spec, eff) -> list[dict]:
    """The claims table (evaluation.claims); C6 from Table 7's per-round timings when it was measured."""
    return claims.claims(results, spec, task_run, efficiency.timings(eff) if eff is not None else None)


def draw_figures(results, spec: Spec, out: Path) -> list[Path]:
    """The figures of REPORT.md, in the order shown: RQ3, RQ2, calibration, RQ1."""
    from evaluation import figures  # imported here because evaluation.figures draws on this module's helpers
    drawn = [figures.plot_top2(results, spec, out), figures.plot_roc(results, spec, out),
             *figures.plot_score_histograms(results, spec, out), figures.plot_reliability(results, out),
             *figures.plot_confusion(results, spec, out), figures.plot_ext_val(results, spec, out)]
    return [f for f in drawn if f]


def describe(results, spec: Spec) -> str:
    profiles = sorted({f"{m['profile']} ({m['backbone']}, {m['crop']} px, {m['epochs']} epochs)"
                       for trials in results.values() for m, _ in trials.values()})
    trials = ", ".join(f"{run} {len(t)}" for run, t in results.items())
    return f"dataset {spec.name}; profile {' / '.join(profiles)}; trials: {trials}"


def provenance_header(results, variant_results, device) -> list[str]:
    """REPORT.md's provenance lines (provenance.report_lines): this report's run, then every
    checkpoint it reports (the main runs and the --variant runs), with a warning line where they
    come from several commits or from a tree with uncommitted changes."""
    runs = {f"{run}/{trial}": m.get("provenance") for run, trials in results.items() for trial, (m, _) in trials.items()}
    runs.update({f"{run}/{trial} [{name}]": m.get("provenance") for name, res in variant_results.items()
                 for run, trials in res.items() for trial, (m, _) in trials.items()})
    return ["Provenance (provenance.py; per run also in `runs/<run>/<trial>.json`):", "",
            *provenance.report_lines(provenance.provenance(device), runs)]
