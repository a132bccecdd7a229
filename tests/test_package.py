"""The repository as a package: a licence, a citation file that names the paper and PMG, and a
pyproject.toml whose modules and packages are the ones in this folder."""
from __future__ import annotations

import ast
import re
import sys
from importlib import metadata

import pytest
import yaml

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_licence_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the efficient-ml-system contributors" in text


def test_citation_cff_names_this_code_the_paper_and_pmg():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    assert cff["message"] and cff["title"] and all("name" in a or "family-names" in a for a in cff["authors"])
    refs = {r["identifiers"][0]["value"]: r for r in cff["references"]}
    assert set(refs) == {"arXiv:2210.06585", "arXiv:2003.03836"}
    paper, pmg = refs["arXiv:2210.06585"], refs["arXiv:2003.03836"]
    assert paper["title"].startswith("Towards an Efficient ML System") and paper["year"] == 2022
    assert [a["family-names"] for a in paper["authors"]] == ["Park", "Chung", "Kwon"]
    assert pmg["title"].startswith("Fine-Grained Visual Classification via Progressive Multi-Granularity")
    assert [a["family-names"] for a in pmg["authors"]] == ["Du", "Chang", "Bhunia", "Xie", "Ma", "Song", "Guo"]
    for ref in refs.values():
        assert ref["type"] == "conference-paper" and ref["conference"]["name"] and ref["url"].startswith("https://arxiv.org/abs/")


def test_pyproject_lists_what_is_here():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "efficient-ml-system" and project["project"]["license"] == "MIT"
    modules = project["tool"]["setuptools"]["py-modules"]
    assert all((ROOT / f"{m}.py").is_file() for m in modules)
    assert {p.stem for p in ROOT.glob("*.py")} <= set(modules)  # every top-level module is installed
    packages = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages == {"data", "models", "evaluation", "pipeline"}
    assert all((ROOT / p / "__init__.py").is_file() for p in packages)
    deps = {d.split(">")[0].split("[")[0].lower() for d in project["project"]["dependencies"]}
    assert {"torch", "torchvision", "numpy", "scipy", "scikit-learn", "pyyaml", "pillow"} <= deps


def test_every_third_party_import_is_declared():
    """Each package the code imports (anywhere, tests and benchmarks included) is pinned in
    requirements.txt or requirements-serve.txt."""
    ours = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"tests", "bench"}
    ours |= {p.stem for p in (ROOT / "bench").glob("*.py")}  # benchmarks import their sibling scripts
    imported = set()
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - ours - set(sys.stdlib_module_names)
    pinned = {re.split(r"[=\[<>]", line)[0].strip().lower().replace("_", "-")
              for f in ("requirements.txt", "requirements-serve.txt") for line in (ROOT / f).read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-r"))}
    dists = metadata.packages_distributions()
    undeclared = {m: dists.get(m) for m in third_party
                  if not {d.lower().replace("_", "-") for d in dists.get(m, [])} & pinned}
    assert not undeclared, f"imported but not in requirements*.txt: {undeclared}"


def test_models_and_pipeline_import_nothing_from_evaluation():
    """Release and serving stand on models/ and pipeline/ alone: evaluation imports them, never the
    reverse (what `grep -rn "from evaluation\\|import evaluation" models/ pipeline/` checks)."""
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for folder in ("models", "pipeline") for path in sorted((ROOT / folder).rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"from evaluation|import evaluation", line)]
    assert not hits, "\n".join(hits)
