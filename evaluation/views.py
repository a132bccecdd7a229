"""Small helpers for the notebooks: evaluate every checkpoint once and hand back the results
dict that evaluation.report's tables and plots take. No metric code of its own."""
from __future__ import annotations

from pathlib import Path

from data.spec import load_spec
from evaluation.report import evaluate_all


def collect(artifacts, data, cache, device="cpu", batch_size=32):
    """(spec, {run: {trial: (metrics, raw)}}) for every ARTIFACTS/<run>/<trial>/best.pt."""
    spec = load_spec(data)
    results, _ = evaluate_all(Path(artifacts), spec, cache, device=device, batch_size=batch_size, progress=False)
    return spec, results


def tables(results, spec, prefix: str):
    """The report's tables whose key starts with `prefix` (e.g. 'table1', 'table3')."""
    from evaluation.report import make_tables
    return [t for k, t in make_tables(results, spec) if k.startswith(prefix)]
