"""Every notebook runs headless through `python -m evaluation.notebooks` (nbclient, the venv's python3
kernel) on tiny checkpoints, shows its own subject and is written as HTML with its outputs;
evaluation.views and every figure of evaluation.figures are checked directly too (figures on
hand-made results, so that the plotted numbers are known)."""
from __future__ import annotations

from types import SimpleNamespace

import nbformat
import numpy as np
import pytest

from evaluation.notebooks import NOTEBOOKS
from tests.conftest import ROOT, run_cli

RUNS = ["uni", "multi", "task_defect", "task_dirt"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One model-output cache for the module: each image set is inferred once per checkpoint."""
    return tmp_path_factory.mktemp("nb_cache")


@pytest.fixture(scope="module")
def evaluation(tiny_data, artifacts, cache, tmp_path_factory):
    from evaluation.views import setup
    return setup(artifacts, tiny_data, cache, tmp_path_factory.mktemp("figures"))


def test_views_setup_defaults_to_the_training_data(tiny_data, artifacts, cache, evaluation):
    from evaluation.views import setup
    ev = setup(artifacts, cache=cache)  # DATA from the runs' args.yaml, FIGURES beside ARTIFACTS
    assert ev.spec.root == tiny_data and ev.figures == artifacts.parent / "results" / "figures"
    assert list(ev.results) == RUNS and len(ev.results["uni"]) == 2
    assert ev.results.keys() == evaluation.results.keys()


def test_report_figures(evaluation, drawn):
    from evaluation.figures import MAX_COLUMNS
    from evaluation.report import draw_figures
    paths = draw_figures(evaluation.results, evaluation.spec, evaluation.figures)
    assert [p.name for p in paths] == ["top2.png", "roc.png", *[f"score_histograms_{r}.png" for r in RUNS],
                                       "reliability.png", *[f"confusion_{r}.png" for r in RUNS], "ext_val.png"]
    for path in paths:  # a vector copy beside every PNG
        assert written(path) and path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    assert len(drawn) == len(paths)
    for fig in drawn:  # at most 3 panels side by side, at most a page wide, text of 9 pt or more
        columns = {round(ax.get_position().x0, 3) for ax in fig.axes}
        assert 1 <= len(columns) <= MAX_COLUMNS and fig.get_figwidth() <= 7.5
        sizes = [t.get_fontsize() for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and a.get_text())]
        assert min(sizes) >= 9


def shown(spec):
    """notebook -> (text it must show, text it must not show, the figures it shows, in order)."""
    test_cols = [f" {t}: test |" for t in spec.tasks]
    ext_cols = [f" {t}: {s} |" for t, sets in spec.external.items() for s in sets]
    return {
        "test_sofar": (["Table 1: accuracy (RQ1), test split", "Table 2: macro F1 (RQ1), test split",
                        "Table 6: calibration", *test_cols], ext_cols,
                       [*[f"confusion_{r}.png" for r in RUNS], "reliability.png"]),
        "test_ext_val": (["Table 1: accuracy (RQ1), external-validation sets",
                          "Table 2: macro F1 (RQ1), external-validation sets",
                          "Table 1: accuracy (RQ1), BatchNorm statistics adapted to each set, external-validation sets",
                          *ext_cols], test_cols, ["ext_val.png"]),
        "test_ood": (["Table 3: one-class", "Table 4: irrelevant-sample rejection", "Table 4b"], ["Table 1"],
                     ["roc.png", *[f"score_histograms_{r}.png" for r in RUNS]]),
        "test_multilabel": ([f"Table 5: multi-label set '{n}'" for n in spec.multilabel], ["Table 1"],
                            ["top2.png", *[f"multilabel_{n}.png" for n in spec.multilabel]]),
    }


@pytest.fixture(scope="module")
def rendered(tiny_data, artifacts, cache, tmp_path_factory):
    """The four notebooks, executed and written by the command that run/reproduce.sh runs."""
    out = tmp_path_factory.mktemp("notebooks")
    proc = run_cli("-m", "evaluation.notebooks", "--artifacts", artifacts, "--data", tiny_data, "--cache-dir", cache,
                   "--out", out)
    assert proc.stdout.split() == [str(out / f"{n}.html") for n in NOTEBOOKS]
    return out


def test_notebooks_render_as_html(tiny_data, rendered):
    import re
    from data.spec import load_spec
    assert sorted(p.name for p in rendered.glob("*.html")) == sorted(f"{n}.html" for n in NOTEBOOKS)
    for name, (_, _, pngs) in shown(load_spec(tiny_data)).items():  # its tables and figures, embedded
        html = (rendered / f"{name}.html").read_text()
        assert "<th>method</th>" in html, name
        assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == len(pngs), name


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tiny_data, rendered):
    from data.spec import load_spec
    committed = nbformat.read(ROOT / name / f"{name}.ipynb", as_version=4)
    assert {"kernelspec", "language_info"} <= set(committed.metadata)
    assert not any(c.get("outputs") or c.get("execution_count") for c in committed.cells if c.cell_type == "code")
    nb = nbformat.read(rendered / f"{name}.ipynb", as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    must, must_not, pngs = shown(load_spec(tiny_data))[name]
    for expected in must:
        assert expected in text, expected
    for unexpected in must_not:
        assert unexpected not in text, unexpected
    assert all((rendered / "figures" / png).is_file() for png in pngs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(pngs)


def test_rendered_figures_are_those_of_the_notebooks(tiny_data, rendered):
    from data.spec import load_spec
    pngs = {png for *_, figs in shown(load_spec(tiny_data)).values() for png in figs}
    assert {p.name for p in (rendered / "figures").glob("*.png")} == pngs


# --- evaluation.figures on hand-made results -------------------------------------------------------

SPEC = SimpleNamespace(class_names=["normal", "defect", "dirt"], tasks={"defect": ("normal", "defect")},
                       external={"defect": {"ext_snow": "ext/snow", "ext_rain": "ext/rain"}},
                       ood={"receipts": "ood/receipts"}, ood_kind={"receipts": "far"}, multilabel={})


@pytest.fixture
def drawn(monkeypatch):
    """The figures that evaluation.figures saves (still open while saved), in order."""
    from evaluation import figures
    seen, save = [], figures.save
    monkeypatch.setattr(figures, "save", lambda fig, path: (seen.append(fig), save(fig, path))[1])
    return seen


def written(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def trial(paradigm, task=None, **raw):
    from models import build_paradigm
    classes = list(build_paradigm(paradigm, SPEC, task).classes)
    m = {"paradigm": paradigm, "task": task, "classes": classes, "rejection": {"paper_scorer": "max_logit"}}
    return m, raw


def test_plot_confusion_counts(drawn, tmp_path):
    from evaluation.figures import plot_confusion
    labels = ["normal", "normal", "defect", "dirt", "dirt"]
    results = {"uni": {"exp1": trial("uni", test={"labels": labels, "top1": ["normal", "dirt", "defect", "dirt", "normal"]}),
                       "exp2": trial("uni", test={"labels": labels, "top1": ["normal", "normal", "dirt", "dirt", "dirt"]})},
               # a task model: the dirt images (not its classes) are left out of its matrix
               "task_defect": {"exp1": trial("task", "defect", test={"labels": labels,
                                                                      "top1": ["normal", "defect", "defect", "normal", "defect"]})}}
    paths = plot_confusion(results, SPEC, tmp_path)
    assert [p.name for p in paths] == ["confusion_uni.png", "confusion_task_defect.png"] and all(map(written, paths))

    def plotted(fig):
        ax = fig.axes[0]
        return ([t.get_text() for t in ax.get_xticklabels()],
                np.array([int(t.get_text()) for t in ax.texts]).reshape(len(ax.get_xticklabels()), -1))

    assert plotted(drawn[0])[0] == ["normal", "defect", "dirt"]
    assert plotted(drawn[0])[1].tolist() == [[3, 0, 1], [0, 1, 1], [1, 0, 3]]  # both trials summed
    assert plotted(drawn[1])[0] == ["normal", "defect"]
    assert plotted(drawn[1])[1].tolist() == [[1, 1], [0, 1]]


def test_plot_ext_val_bars(drawn, tmp_path):
    from evaluation.figures import plot_ext_val

    def run(*accs, paradigm="uni", task=None):
        return {f"exp{i}": ({**trial(paradigm, task)[0], "tasks": {"defect": {"sets": {
            "ext_snow": {"accuracy": a}, "ext_rain": {"accuracy": a / 2}}}}}, {}) for i, a in enumerate(accs)}

    path = plot_ext_val({"uni": run(0.6, 0.8), "task_defect": run(0.4, paradigm="task", task="defect")}, SPEC, tmp_path)
    assert path.name == "ext_val.png" and written(path)
    snow, rain = drawn[0].axes
    assert [b.get_height() for b in snow.patches] == pytest.approx([0.7, 0.4])  # mean over trials, per run
    assert [b.get_height() for b in rain.patches] == pytest.approx([0.35, 0.2])
    assert snow.get_title() == "defect: ext_snow"


def test_plot_score_histograms(drawn, tmp_path):
    from evaluation.figures import plot_score_histograms
    rng = np.random.default_rng(0)
    rejection = {"receipts": {"max_logit": (rng.normal(3, 1, 50), rng.normal(0, 1, 20))}}
    results = {r: {"exp1": trial("uni", rejection=rejection)} for r in ("uni", "multi")}
    paths = plot_score_histograms(results, SPEC, tmp_path)
    assert [p.name for p in paths] == ["score_histograms_uni.png", "score_histograms_multi.png"]
    assert all(map(written, paths))
    assert len(drawn[0].axes) == 1  # one figure per run, one panel per OOD set
    [legend] = drawn[0].legends  # one legend under the panels
    assert [t.get_text() for t in legend.get_texts()] == ["test split (50 images)", "the panel's OOD set"]
    assert drawn[0].axes[0].get_title() == "receipts (far): 20 images"


def test_plot_multilabel_examples(drawn, tiny_data, tmp_path):
    from data.spec import load_spec
    from evaluation.figures import plot_multilabel_examples
    spec = load_spec(tiny_data)
    name, mset = next(iter(spec.multilabel.items()))
    n = len(spec.flat_images(mset.path))
    ranked = {r: [["defect", "dirt", "normal"]] * n for r in ("plain", "coherent")}
    results = {"uni": {"exp1": trial("uni", multilabel={name: {"by_rule": ranked}})}}
    [path] = plot_multilabel_examples(results, spec, tmp_path, n=8)
    assert path.name == f"multilabel_{name}.png" and written(path)
    assert [ax.get_xlabel() for ax in drawn[0].axes] == ["1. defect\n2. dirt"] * min(n, 8)
