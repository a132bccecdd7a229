"""The procedural dataset generator: determinism, layout, CLI safety, and that no single global
pixel statistic gives the classes away."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data.generate import generate
from data.generate.build import CLASSES, EXTERNAL, MULTILABEL, OOD, TASKS, dataset_spec
from data.images import content_hash
from data.spec import EXTERNAL_KEYS, KEYS, OOD_KEYS, load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "dataset.example.yaml"
TINY = dict(size=64, train=3, val=2, test=2, ext=2, ood=2, multilabel=2, workers=1, montage=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny")
    counts = generate(out, seed=0, **{**TINY, "montage": True})
    return out, counts


def test_deterministic_and_seeded(tiny, tmp_path):
    first, _ = tiny
    again = tmp_path / "again"
    generate(again, seed=0, **{**TINY, "workers": 2})  # worker count must not matter
    a = {k: v for k, v in _files(first).items() if k != "montage.png"}
    b = _files(again)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), "same seed gave different bytes"
    other = tmp_path / "other"
    generate(other, seed=1, **TINY)
    c = _files(other)
    assert sorted(c) == sorted(b)
    images = [k for k in b if k.endswith(".jpg")]
    assert sum(b[k] != c[k] for k in images) == len(images), "a different seed repeated an image"


def test_layout_counts_and_spec(tiny):
    root, counts = tiny
    spec = yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8"))
    assert spec["classes"] == CLASSES
    assert spec["splits"] == {"train": "train", "val": "val", "test": "test"}
    n = {"train": TINY["train"], "val": TINY["val"], "test": TINY["test"]}
    for split, folder in spec["splits"].items():
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(CLASSES.values())
        for cls_folder in CLASSES.values():
            assert len(list((root / folder / cls_folder).glob("*.jpg"))) == n[split]
    # every external set and its val split named by the spec exists with the task's two class folders, and
    # vice versa; the val split has half as many images (rounded up) unless told
    spec_ext = {s[k] for sets in spec["external"].values() for s in sets.values() for k in ("path", "val")}
    assert spec_ext == {f"{folder}/{name}" for name in EXTERNAL for folder in ("ext", "ext_val")}
    ext_val = (TINY["ext"] + 1) // 2
    assert counts["ext_val"] == {name: dict.fromkeys(TASKS[task], ext_val) for name, task in EXTERNAL.items()}
    for task, sets in spec["external"].items():
        neg, pos = spec["tasks"][task]
        for entry in sets.values():
            for path, n in ((entry["path"], TINY["ext"]), (entry["val"], ext_val)):
                assert sorted(p.name for p in (root / path).iterdir()) == sorted([CLASSES[neg], CLASSES[pos]])
                for c in (neg, pos):
                    assert len(list((root / path / CLASSES[c]).glob("*.jpg"))) == n
    assert set(spec["ood"]) == set(OOD)
    ood_paths = {p for s in spec["ood"].values() for p in (s["path"], s["val"])}
    for path in ood_paths:
        assert len(list((root / path).glob("*.jpg"))) == TINY["ood"]
    ml = spec["multilabel"][MULTILABEL]
    assert ml["labels"] == ["defect", "dirt"]
    assert len(list((root / ml["path"]).glob("*.jpg"))) == TINY["multilabel"]
    # no folder on disk that the spec does not name
    named = set(spec["splits"].values()) | {p.split("/")[0] for p in spec_ext | ood_paths} | {"multilabel"}
    assert {p.name for p in root.iterdir() if p.is_dir()} == named
    jpgs = list(root.rglob("*.jpg"))
    assert len(jpgs) == counts["total"] == len({p.name for p in jpgs})  # stems unique dataset-wide
    for p in jpgs[::7]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
    assert (root / "montage.png").stat().st_size > 0


def test_ood_sets_have_near_and_far_kinds_and_disjoint_val_splits(tiny):
    """Thresholds are chosen on ood_val and reported on ood: no image may be in both."""
    root, _ = tiny
    spec = load_spec(root)
    assert spec.ood_kind == OOD and {"near", "far"} == set(OOD.values())
    assert set(spec.ood_val) == set(spec.ood)
    for name in spec.ood:
        reported = {content_hash(p) for p in spec.flat_images(spec.ood[name])}
        val = {content_hash(p) for p in spec.flat_images(spec.ood_val[name])}
        assert len(reported) == len(val) == TINY["ood"]
        assert not reported & val, f"{name}: an image is in both ood and ood_val"


def test_external_val_splits_are_disjoint_and_leave_the_external_sets_as_they_were(tiny, tmp_path):
    """Defaults are chosen on ext_val and reported on ext: no image may be in both, and ext/ holds the
    same bytes whether or not its val split is generated (the val split draws from its own seeds)."""
    root, _ = tiny
    spec = load_spec(root)
    assert {t: set(s) for t, s in spec.external_val.items()} == {t: set(s) for t, s in spec.external.items()}
    for task, sets in spec.external.items():
        for name, folder in sets.items():
            reported = {content_hash(p) for p, _ in spec.samples(folder, list(spec.tasks[task]))}
            val = {content_hash(p) for p, _ in spec.samples(spec.external_val[task][name], list(spec.tasks[task]))}
            assert not reported & val, f"{name}: an image is in both ext and ext_val"
    alone = tmp_path / "alone"
    generate(alone, seed=0, **{**TINY, "train": 0, "val": 0, "test": 0, "ood": 0, "multilabel": 0, "ext_val": 0})
    assert _files(alone / "ext") == _files(root / "ext") and not (alone / "ext_val").exists()
    assert load_spec(alone).external_val == {}  # no val split generated: the spec names none


def test_docs_example_is_the_generated_spec_and_documents_every_key():
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert example == dataset_spec()
    assert list(example) == list(KEYS)
    assert {k for s in example["ood"].values() for k in s} == set(OOD_KEYS)
    assert {k for sets in example["external"].values() for s in sets.values() for k in s} == set(EXTERNAL_KEYS)


def _yaml_blocks(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return [yaml.safe_load(b.split("```", 1)[0]) for b in text.split("```yaml\n")[1:]]


def test_the_annotated_spec_of_docs_data_is_the_generated_spec():
    full = [b for b in _yaml_blocks(ROOT / "docs" / "data.md") if "tasks" in b]
    drop = lambda d: {k: v for k, v in d.items() if k not in ("name", "version")}  # noqa: E731
    assert len(full) == 1 and drop(full[0]) == drop(dataset_spec())


def test_the_readme_minimal_spec_passes_the_dataset_check(tmp_path):
    """The README's spec names only classes and splits, and `python -m data.spec` accepts it."""
    spec = _yaml_blocks(ROOT / "README.md")[0]
    assert set(spec) == {"classes", "splits"} and set(spec["splits"]) == {"train", "val", "test"}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    for split in spec["splits"].values():
        for folder in spec["classes"].values():  # <split>/<class>/*.jpg, as the README shows
            (tmp_path / split / folder).mkdir(parents=True)
            Image.new("RGB", (16, 16), "gray").save(tmp_path / split / folder / "a.jpg")
    r = subprocess.run([sys.executable, "-m", "data.spec", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cli_refuses_non_empty_dir(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cmd = [sys.executable, "-m", "data.generate", "--out", str(out), "--size", "32", "--train", "1", "--val", "1",
           "--test", "1", "--ext", "1", "--ext-val", "2", "--ood", "1", "--multilabel", "1", "--workers", "1", "--no-montage"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert str(out) in r.stderr and "--force" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    r = subprocess.run(cmd + ["--force"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "keep.txt").exists() and (out / "dataset.yaml").exists()
    assert len(list((out / "ext_val" / "snow" / CLASSES["defect"]).glob("*.jpg"))) == 2


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Accuracy of the best 1-D threshold (either direction) separating samples a from b."""
    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))][np.argsort(x, kind="stable")]
    left0 = np.r_[0, np.cumsum(y == 0)]  # class a at or below each cut
    right1 = (y == 1).sum() - np.r_[0, np.cumsum(y == 1)]
    acc = (left0 + right1) / len(y)
    return float(max(acc.max(), (1 - acc).max()))


def test_threshold_helper_detects_separable_data():
    assert _best_threshold_accuracy(np.arange(10.0), np.arange(10.0) + 100) == 1.0
    assert _best_threshold_accuracy(np.arange(10.0) + 100, np.arange(10.0)) == 1.0


def test_no_global_statistic_separates_classes(tmp_path):
    """Mean brightness and mean R, G, B overlap across normal / defect / dirt, so a model has to
    look at the marks, not at the exposure or the colour of the car."""
    root = tmp_path / "sep"
    generate(root, seed=3, size=64, train=30, val=0, test=0, ext=0, ood=0, multilabel=0, workers=2, montage=False)

    def stats(folder):
        out = []
        for p in sorted((root / "train" / folder).glob("*.jpg")):
            a = np.asarray(Image.open(p), np.float32) / 255
            out.append([a.mean(), *a.mean(axis=(0, 1))])
        return np.array(out)

    normal = stats(CLASSES["normal"])
    worst = {}
    for c in ("defect", "dirt"):
        other = stats(CLASSES[c])
        for i, name in enumerate(["brightness", "R", "G", "B"]):
            worst[f"{c}/{name}"] = _best_threshold_accuracy(normal[:, i], other[:, i])
    assert max(worst.values()) < 0.85, worst
