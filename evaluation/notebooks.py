"""Run the four notebooks headless and write each with its outputs as HTML and .ipynb.

The HTML is for a reader without Jupyter (a web page, figures embedded), the executed .ipynb for one
with it; the committed notebooks stay without outputs.

    python -m evaluation.notebooks --artifacts artifacts --cache-dir results/cache --out results/notebooks

Each notebook runs in its own folder on the python3 kernel of the interpreter that runs this (with
this checkout first on PYTHONPATH, whichever checkout the environment was installed from), with
one cell added after its `parameters` cell that sets ARTIFACTS, DATA, CACHE and FIGURES (what
papermill does); a cell that fails stops with the notebook's name and the error.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("test_sofar", "test_ext_val", "test_ood", "test_multilabel")
TIMEOUT = 1800  # seconds per cell: the first cell evaluates every checkpoint when the cache is cold


class NotebookError(RuntimeError):
    """A cell of a notebook failed; the message names the notebook and shows the cell's error."""


def execute(name: str, artifacts, data=None, cache=None, figures=None, timeout: int = TIMEOUT):
    """The notebook `name` (one of NOTEBOOKS) executed with these parameters (None: the notebook's
    default); paths are made absolute from the current folder. Returns the executed notebook."""
    from nbclient import NotebookClient
    folder = ROOT / name
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    values = {"ARTIFACTS": artifacts, "DATA": data, "CACHE": cache, "FIGURES": figures}
    source = "\n".join(f"{k} = {str(Path(v).resolve()) if v is not None else None!r}" for k, v in values.items())
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    # the kernel imports this checkout's code, whichever checkout the environment was installed from
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with patched_env(PYTHONPATH=path):
        NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(folder)}}).execute()
    return nb


@contextmanager
def patched_env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def to_html(nb) -> str:
    """The executed notebook as one self-contained HTML page (figures embedded)."""
    from nbconvert import HTMLExporter
    return HTMLExporter().from_notebook_node(nb)[0]


def render(artifacts, out, data=None, cache=None, figures=None, names=NOTEBOOKS) -> list[Path]:
    """Execute each notebook and write OUT/<name>.html and OUT/<name>.ipynb; FIGURES (default
    OUT/figures) receives the PNGs and SVGs they draw. Returns the HTML paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = Path(figures) if figures is not None else out / "figures"
    from nbclient.exceptions import CellExecutionError
    written = []
    for name in names:
        try:
            nb = execute(name, artifacts, data, cache, figures)
        except CellExecutionError as e:
            raise NotebookError(f"{name}/{name}.ipynb failed:\n{e}") from None
        nbformat.write(nb, out / f"{name}.ipynb")
        written.append(out / f"{name}.html")
        written[-1].write_text(to_html(nb), encoding="utf-8")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", default="artifacts", help="folder of <run>/<trial>/best.pt (default: artifacts)")
    ap.add_argument("--data", help="dataset folder (default: the one the runs were trained on)")
    ap.add_argument("--cache-dir", help="model-output cache (default: results/cache beside ARTIFACTS); "
                                        "evaluate.py report's cache (its OUT/cache) reuses what the report inferred")
    ap.add_argument("--figures", help="where the notebooks write their figures (default: OUT/figures)")
    ap.add_argument("--out", default="results/notebooks", help="folder for <name>.html and <name>.ipynb "
                                                                "(default: results/notebooks)")
    ap.add_argument("--only", nargs="+", choices=NOTEBOOKS, default=list(NOTEBOOKS), metavar="NAME",
                    help=f"the notebooks to render (default: all of {', '.join(NOTEBOOKS)})")
    args = ap.parse_args(argv)
    try:
        for path in render(args.artifacts, args.out, args.data, args.cache_dir, args.figures, args.only):
            print(path)
    except NotebookError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
