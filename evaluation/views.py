"""What the notebooks share: `setup` evaluates every checkpoint once (cached) and `show` displays
tables and figures. The tables come from evaluation.paper_tables, the figures from evaluation.figures;
nothing here computes a metric.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from data.spec import Spec, load_spec
from evaluation.report import evaluate_all

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "datasets/sofar_embedded"  # train.py's default --data


@dataclass
class Evaluation:
    spec: Spec
    results: dict  # {run: {trial: (metrics, raw)}}, as evaluation.report.evaluate_all returns
    figures: Path  # where the notebook's PNGs are written


def setup(artifacts, data=None, cache=None, figures=None, device="cpu", batch_size=32) -> Evaluation:
    """Evaluate every ARTIFACTS/<run>/<trial>/best.pt on DATA. Relative paths are taken from the
    repository root (a notebook runs in its own folder). Defaults: DATA = the dataset the first run was
    trained on (its args.yaml), CACHE = results/cache and FIGURES = results/figures beside ARTIFACTS."""
    artifacts = _from_root(artifacts)
    data = _from_root(data) if data else trained_on(artifacts)
    cache = _from_root(cache) if cache else artifacts.parent / "results" / "cache"
    figures = _from_root(figures) if figures else artifacts.parent / "results" / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    spec = load_spec(data)
    results, _ = evaluate_all(artifacts, spec, cache, device=device, batch_size=batch_size, progress=False)
    return Evaluation(spec, results, figures)


def trained_on(artifacts: Path) -> Path:
    """The --data of the first run under ARTIFACTS (train.py's default when there is none)."""
    for args in sorted(artifacts.glob("*/*/args.yaml")):
        data = (yaml.safe_load(args.read_text()) or {}).get("data")
        if data:
            return _from_root(data)
    return ROOT / DEFAULT_DATA


def _from_root(path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def show(*items) -> None:
    """Display each table (as Markdown) and each figure path (as an image); lists are flattened and
    None (a figure with nothing to draw) is skipped."""
    from IPython.display import Image, display
    for item in items:
        if isinstance(item, (list, tuple)):
            show(*item)
        elif isinstance(item, (str, Path)):
            display(Image(filename=str(item)))
        elif item is not None:
            display(item)
