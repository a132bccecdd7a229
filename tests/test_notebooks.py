"""Every notebook runs headless (nbclient, the venv's python3 kernel) on tiny checkpoints and shows
its tables; evaluation.views is checked directly too."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = {"test_sofar": ["Table 1: accuracy", "Table 2: macro F1", "calibration"],
             "test_ext_val": ["Table 1: accuracy", "Table 2: macro F1"],
             "test_ood": ["Table 3: one-class", "Table 4: irrelevant-sample rejection"],
             "test_multilabel": ["Table 5: multi-label set"]}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One model-output cache for the module: each image set is inferred once per checkpoint."""
    return tmp_path_factory.mktemp("nb_cache")


def test_views_collect_and_tables(tiny_data, artifacts, cache):
    from evaluation.views import collect, tables
    spec, results = collect(artifacts, tiny_data, cache)
    assert set(results) == {"uni", "multi", "task_defect", "task_dirt"} and len(results["uni"]) == 2
    assert [t.title for t in tables(results, spec, "table3")] == ["Table 3: one-class recognition AUROC (RQ2)"]


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs(name, tiny_data, artifacts, cache, tmp_path):
    folder = ROOT / name
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    assert not any(c.get("outputs") or c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(params + 1, nbformat.v4.new_code_cell(
        f"DATA = {str(tiny_data)!r}\nARTIFACTS = {str(artifacts)!r}\nCACHE = {str(cache)!r}\n"
        f"FIGS = {str(tmp_path / 'figs')!r}"))
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells for o in c.get("outputs", []))
    for expected in NOTEBOOKS[name]:
        assert expected in text, expected
