"""Tests for `python -m data.concat`: merging task datasets into one label space."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data.concat import concat
from data.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)


def jpeg(path: Path) -> Path:
    """A 16x16 JPEG of random noise (distinct content, so distinct hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path, "JPEG")
    return path


def tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/img<k>.jpg with the given counts."""
    for split, classes in layout.items():
        for cls, n in classes.items():
            for k in range(n):
                jpeg(root / split / cls / f"img{k}.jpg")
    return root


def run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data.concat", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if "concat-tmp" in p.name]


@pytest.fixture
def two_tasks(tmp_path):
    a = tree(tmp_path / "A", {"train": {"0_NORMAL": 4, "2_DIRT": 4}, "test": {"0_NORMAL": 2, "2_DIRT": 2}})
    b = tree(tmp_path / "B", {"train": {"clean": 4, "defect": 4}, "test": {"clean": 2, "defect": 2}})
    shutil.copy(a / "train/2_DIRT/img0.jpg", b / "train/defect/same_photo.jpg")  # cross-labelled
    shutil.copy(a / "train/0_NORMAL/img0.jpg", b / "train/clean/same_normal.jpg")  # agreeing
    return a, b


def test_two_task_datasets_merge(two_tasks, tmp_path):
    a, b = two_tasks
    out = tmp_path / "merged"
    r = run("--source", f"dirt={a}", "--source", f"defect={b}", "--alias", "clean=normal", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "merged" in r.stdout and "multilabel/defect_and_dirt" in r.stdout
    report = json.loads((out / "concat_report.json").read_text())
    assert set(report["classes"]) == {"normal", "dirt", "defect"}

    before = sum(n for src in report["counts_before"].values() for sp in src.values() for n in sp.values())
    after = sum(n for sp in report["counts_after"].values() for n in sp.values())
    assert before == 4 + 4 + 2 + 2 + 5 + 5 + 2 + 2
    assert after == before - 1 - 2
    assert report["counts_after"]["train"] == {"normal": 4 + 5 - 1, "dirt": 3, "defect": 4}
    assert report["counts_after"]["test"] == {"normal": 4, "dirt": 2, "defect": 2}
    on_disk = {s: {c: len(list((out / s / c).iterdir())) for c in report["classes"]} for s in ("train", "test")}
    assert on_disk == report["counts_after"]

    agree = [d for d in report["duplicates"] if d["labels_agree"]]
    cross = [d for d in report["duplicates"] if not d["labels_agree"]]
    assert len(agree) == 1 and len(cross) == 1 and not any(d["leak"] for d in report["duplicates"])
    assert "kept one copy" in agree[0]["action"]
    assert set(cross[0]["labels"]) == {"defect", "dirt"}
    assert {m["path"] for m in cross[0]["members"]} == {str(a / "train/2_DIRT/img0.jpg"),
                                                         str(b / "train/defect/same_photo.jpg")}
    assert "multilabel/defect_and_dirt" in cross[0]["action"]
    assert len(list((out / "multilabel/defect_and_dirt").iterdir())) == 1
    assert report["multilabel"]["defect_and_dirt"]["labels"] == ["defect", "dirt"]

    spec = load_spec(out)
    assert spec.tasks == {"dirt": ("normal", "dirt"), "defect": ("normal", "defect")}
    assert spec.multilabel["defect_and_dirt"].labels == ("defect", "dirt")
    assert len(spec.flat_images(spec.multilabel["defect_and_dirt"].path)) == 1
    assert len(spec.split_samples("train")) == report["counts_after"]["train"]["normal"] + 3 + 4
    names = [p.name for p, _ in spec.split_samples("train")]
    assert all(n.startswith(("dirt__", "defect__")) for n in names)
    assert no_leftovers(tmp_path)


def test_leak_across_splits(tmp_path):
    a = tree(tmp_path / "A", {"train": {"normal": 3, "dirt": 3}, "test": {"normal": 2, "dirt": 2}})
    b = tree(tmp_path / "B", {"train": {"normal": 3, "defect": 3}, "test": {"normal": 2, "defect": 2}})
    shutil.copy(a / "train/normal/img1.jpg", b / "test/normal/leaked.jpg")
    report = concat({"dirt": a, "defect": b}, tmp_path / "out", {})
    [dup] = report["duplicates"]
    assert dup["leak"] and dup["labels_agree"] and dup["splits"] == ["test", "train"]
    assert "test" in dup["action"]  # the evaluation copy is kept, the training copy dropped
    assert report["counts_after"]["train"]["normal"] == 3 + 3 - 1
    assert report["counts_after"]["test"]["normal"] == 2 + 3
    assert "LEAK" in run("--source", f"dirt={a}", "--source", f"defect={b}", "--out", tmp_path / "o2").stdout


def test_flat_class_folders_and_links(tmp_path):
    a = tree(tmp_path / "A", {"1_DEFECT": {"": 2}, "0_NORMAL": {"": 2}})  # <class>/*.jpg: one split 'train'
    b = tree(tmp_path / "B", {"train": {"normal": 2, "dirt": 2}})
    for link in ("hardlink", "symlink"):
        out = tmp_path / link
        report = concat({"defect": a, "dirt": b}, out, {}, link=link)
        assert report["splits"] == ["train"] and report["tasks"]["defect"] == ["normal", "defect"]
        f = next((out / "train/defect").iterdir())
        assert f.is_symlink() == (link == "symlink") and f.read_bytes()
        # the linked dataset loads: its links leave its root by design, and its spec says so
        assert len(load_spec(out).split_samples("train")) == 8


def test_spec_sources_bring_tasks_external_ood(tmp_path):
    a = tree(tmp_path / "A", {"tr": {"0_N": 2, "Dirt": 2}, "ext/h1": {"0_N": 1, "Dirt": 1},
                              "ext_val/h1": {"0_N": 1, "Dirt": 2}, "ext/h2": {"0_N": 1, "Dirt": 1}})
    jpeg(a / "ood/receipts/r.jpg")
    jpeg(a / "both/x.jpg")
    (a / "dataset.yaml").write_text(yaml.safe_dump({
        "classes": {"normal": "0_N", "Dirt": "Dirt"}, "splits": {"train": "tr"},
        "tasks": {"dirt": ["normal", "Dirt"]},
        "external": {"dirt": {"ext_h1": {"path": "ext/h1", "val": "ext_val/h1"}, "ext_h2": "ext/h2"}},
        "ood": {"receipts": "ood/receipts"},
        "multilabel": {"nd": {"path": "both", "labels": ["Dirt", "normal"]}}}))
    b = tree(tmp_path / "B", {"train": {"normal": 2, "dirt": 2}})
    out = tmp_path / "out"
    r = run("--source", f"a={a}", "--source", f"b={b}", "--out", out)  # 'Dirt' v 'dirt': case clash
    assert r.returncode == 2 and not out.exists()
    assert str(a / "dataset.yaml") in r.stderr and "--alias Dirt=dirt" in r.stderr
    r = run("--source", f"a={a}", "--source", f"b={b}", "--alias", "Dirt=dirt", "--out", out)
    assert r.returncode == 0, r.stderr
    spec = load_spec(out)
    assert spec.tasks == {"dirt": ("normal", "dirt")}  # source b's own derived task agrees
    assert len(spec.samples(spec.external["dirt"]["ext_h1"], ["normal", "dirt"])) == 2
    assert set(spec.external["dirt"]) == {"ext_h1", "ext_h2"} and set(spec.external_val["dirt"]) == {"ext_h1"}
    assert len(spec.samples(spec.external_val["dirt"]["ext_h1"], ["normal", "dirt"])) == 3  # the val split's own
    assert len(spec.flat_images(spec.ood["receipts"])) == 1
    assert spec.multilabel["dirt_and_normal"].labels == ("dirt", "normal")
    assert len(spec.flat_images(spec.multilabel["dirt_and_normal"].path)) == 1


def test_alias_merges_folders_with_same_file_names(tmp_path):
    a = tree(tmp_path / "A", {"train": {"clean": 2, "normal": 2, "dirt": 2}})
    report = concat({"dirt": a}, tmp_path / "out", {"clean": "normal"})
    assert report["counts_after"]["train"] == {"normal": 4, "dirt": 2}
    assert len(list((tmp_path / "out/train/normal").iterdir())) == 4


def test_skip_bad_lists_them(tmp_path):
    a = tree(tmp_path / "A", {"train": {"normal": 2, "dirt": 2}})
    (a / "train/dirt/broken.jpg").write_bytes(b"not a jpeg")
    report = concat({"dirt": a}, tmp_path / "out", {}, skip_bad=True)
    assert report["counts_after"]["train"] == {"normal": 2, "dirt": 2}
    assert len(report["skipped_bad"]) == 1 and "broken.jpg" in report["skipped_bad"][0]


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (CLI args before --out, text the one-line error must contain)."""
    good = tree(tmp_path / "good", {"train": {"normal": 2, "dirt": 2}})
    empty = tmp_path / "empty"
    empty.mkdir()
    empty_cls = tree(tmp_path / "ec", {"train": {"normal": 2, "dirt": 1}})
    (empty_cls / "train/defect").mkdir()
    corrupt = tree(tmp_path / "cor", {"train": {"normal": 2, "dirt": 2}})
    (corrupt / "train/dirt/trunc.jpg").write_bytes((corrupt / "train/dirt/img0.jpg").read_bytes()[:60])
    (corrupt / "train/normal/zero.jpg").write_bytes(b"")
    return {
        "missing": (["--source", f"x={tmp_path / 'nope'}"], str(tmp_path / "nope")),
        "no_folders": (["--source", f"x={empty}"], str(empty)),
        "empty_class": (["--source", f"x={empty_cls}"], str(empty_cls / "train/defect")),
        "corrupt": (["--source", f"x={corrupt}"], str(corrupt / "train/dirt/trunc.jpg")),
        "corrupt_all_listed": (["--source", f"x={corrupt}"], str(corrupt / "train/normal/zero.jpg")),
        "source_no_equals": (["--source", str(good)], "NAME=PATH"),
        "source_empty_name": (["--source", f"={good}"], "NAME=PATH"),
        "source_bad_name": (["--source", f"a/b={good}"], "NAME=PATH"),
        "source_twice": (["--source", f"x={good}", "--source", f"x={good}"], "given twice"),
        "alias_malformed": (["--source", f"x={good}", "--alias", "clean"], "OLD=NEW"),
        "alias_unused": (["--source", f"x={good}", "--alias", "clean=normal"], "no source has a class 'clean'"),
    }


CASES = ["missing", "no_folders", "empty_class", "corrupt", "corrupt_all_listed", "source_no_equals",
         "source_empty_name", "source_bad_name", "source_twice", "alias_malformed", "alias_unused"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(tmp_path, case):
    args, needle = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    r = run(*args, "--out", out)
    assert r.returncode == 2, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists() and no_leftovers(tmp_path)


def test_out_not_empty_needs_force(tmp_path):
    a = tree(tmp_path / "A", {"train": {"normal": 2, "dirt": 2}})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run("--source", f"dirt={a}", "--out", out)
    assert r.returncode == 2 and str(out) in r.stderr and "--force" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    r = run("--source", f"dirt={a}", "--out", a, "--force")  # --force must never delete a source
    assert r.returncode == 2 and "overlaps source" in r.stderr and (a / "train/dirt/img0.jpg").exists()
    r = run("--source", f"dirt={a}", "--out", out, "--force")
    assert r.returncode == 0 and not (out / "keep.txt").exists() and load_spec(out).tasks


# --- python -m data.concat add: one more task --------------------------------------------------

@pytest.fixture
def merged(two_tasks, tmp_path):
    """The concatenated dataset of two_tasks (splits train and test; tasks dirt and defect)."""
    a, b = two_tasks
    out = tmp_path / "merged"
    concat({"dirt": a, "defect": b}, out, {"clean": "normal"})
    return out


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_add_task_merges_one_new_class_with_the_duplicate_report(merged, tmp_path):
    t = tree(tmp_path / "T", {"train": {"clean": 2, "9_TYRE": 3}, "test": {"clean": 1, "9_TYRE": 2}})
    shutil.copy(merged / "train/dirt/dirt__img1.jpg", t / "train/9_TYRE/same_as_dirt.jpg")  # cross-labelled
    shutil.copy(merged / "train/normal/dirt__img1.jpg", t / "test/clean/leaked.jpg")  # agreeing, train/test leak
    before = files(merged)
    out = tmp_path / "plus"
    r = run("add", "--dataset", merged, "--task-data", t, "--alias", "clean=normal", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "added class tyre and task tyre: ['normal', 'tyre']" in r.stdout and "LEAK" in r.stdout
    assert f"report: {out}/add_report_tyre.json" in r.stdout
    assert files(merged) == before  # the dataset itself is never changed

    spec, old = load_spec(out), load_spec(merged)
    assert spec.class_names == old.class_names + ["tyre"]  # appended: old label indices stay
    assert spec.classes["tyre"] == ("9_TYRE",) and spec.tasks == {**old.tasks, "tyre": ("normal", "tyre")}
    report = json.loads((out / "add_report_tyre.json").read_text())
    assert report["added"] == {"class": "tyre", "folder": "9_TYRE", "task": "tyre", "negative": "normal",
                               "multitask": None, "dataset": str(merged)}
    [cross] = [d for d in report["duplicates"] if not d["labels_agree"]]
    [leak] = [d for d in report["duplicates"] if d["leak"]]
    assert cross["labels"] == ["dirt", "tyre"] and leak["labels_agree"] and "test" in leak["action"]
    assert spec.multilabel["dirt_and_tyre"].labels == ("dirt", "tyre")
    after = report["counts_after"]
    assert after["train"] == {"normal": 8 - 1 + 2, "dirt": 3 - 1, "defect": 4, "tyre": 3}
    assert after["test"] == {"normal": 4 + 1 + 1, "dirt": 2, "defect": 2, "tyre": 2}
    assert {s: {c: len(spec.split_samples(s, [c])) for c in spec.classes} for s in ("train", "test")} == after
    # everything else of the dataset is carried over as it was (its layout, sets and report)
    assert (out / "concat_report.json").read_bytes() == before["concat_report.json"]
    assert len(spec.flat_images(spec.multilabel["defect_and_dirt"].path)) == 1


def test_hold_out_then_add_gives_the_full_dataset(tmp_path):
    """`python -m data.generate --hold-out C` + `python -m data.concat add` = the full dataset:
    the same images (by content) in every split and class, the class last, and a task for it."""
    from data.generate import generate
    from data.images import content_hash
    small = dict(seed=0, size=24, train=3, val=2, test=2, ext=1, ood=1, multilabel=1, workers=1, montage=False)
    generate(tmp_path / "full", **small)
    r = subprocess.run([sys.executable, "-m", "data.generate", "--out", tmp_path / "old", "--hold-out", "seat",
                        *[f"--{k}={v}" for k, v in small.items() if k not in ("workers", "montage")],
                        "--workers", "1", "--no-montage"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "python -m data.concat add" in r.stdout, r.stderr
    assert "seat" not in load_spec(tmp_path / "old").classes
    assert sorted(p.parent.name for p in (tmp_path / "old_seat").glob("*/*/*.jpg")) == ["9_SEAT"] * 7
    assert run("add", "--dataset", tmp_path / "old", "--task-data", tmp_path / "old_seat",
               "--out", tmp_path / "plus").returncode == 0
    full, plus = load_spec(tmp_path / "full"), load_spec(tmp_path / "plus")
    assert plus.class_names == [c for c in full.class_names if c != "seat"] + ["seat"]
    assert plus.tasks == {**full.tasks, "seat": ("normal", "seat")} and plus.multitask == full.multitask
    assert plus.external_val == full.external_val and set(full.external_val) == set(full.external)
    hashes = lambda spec, s: sorted((c, content_hash(p)) for p, c in spec.split_samples(s))  # noqa: E731
    assert all(hashes(full, s) == hashes(plus, s) for s in full.splits)
    r = subprocess.run([sys.executable, "-m", "data.generate", "--out", tmp_path / "x", "--hold-out", "defect"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: --hold-out defect") and "washer_fluid" in r.stderr


def add_cases(merged: Path, tmp_path: Path) -> dict[str, tuple[list, str]]:
    """case -> (CLI args of `add` before --out, text its one-line error must contain)."""
    ok = tree(tmp_path / "ok", {"train": {"tyre": 2}, "test": {"tyre": 1}})
    two_new = tree(tmp_path / "two", {"train": {"clean": 2, "tyre": 2}, "test": {"clean": 1, "tyre": 1}})
    no_test = tree(tmp_path / "notest", {"train": {"tyre": 2}})
    odd_split = tree(tmp_path / "odd", {"train": {"tyre": 2}, "test": {"tyre": 1}, "holdout": {"tyre": 1}})
    base = ["--dataset", merged, "--task-data"]
    return {
        "exists": (base + [tmp_path / "dirt_again"], "nothing to add"),
        "two_new": (base + [two_new], "--alias OLD=NEW"),
        "split_lacks_class": (base + [no_test], "no 'tyre' images in split(s) test"),
        "unknown_split": (base + [odd_split], "split 'holdout'"),
        "task_exists": (base + [ok, "--task", "dirt"], "already a task"),
        "binary_without_multitask": (base + [ok, "--binary"], "no 'multitask:'"),
        "negative_unknown": (base + [ok, "--negative", "nobody"], "--negative nobody"),
    }


@pytest.mark.parametrize("case", ["exists", "two_new", "split_lacks_class", "unknown_split", "task_exists",
                                  "binary_without_multitask", "negative_unknown"])
def test_add_bad_input(merged, tmp_path, case):
    tree(tmp_path / "dirt_again", {"train": {"dirt": 1}, "test": {"dirt": 1}})
    args, needle = add_cases(merged, tmp_path)[case]
    out = tmp_path / "out"
    r = run("add", *args, "--out", out)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "add-tmp" in p.name]
