"""The dataset spec and every bad input it must name precisely."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data.images import ImageError, load_rgb
from data.spec import SpecError, load_spec
from tests.builders import make_dataset
from tests.conftest import TINY_TRAIN, run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "dataset.example.yaml"


EXT = "classes: {a: A, b: B}\nsplits: {train: t}\ntasks: {t: [a, b]}\nexternal: {t: "  # + the task's sets
BASE = {"classes": {"normal": "0_NORMAL", "dirt": "2_DIRT"}, "splits": {"train": "train", "val": "val"},
        "tasks": {"dirt": ["normal", "dirt"]}}


def test_example_spec_in_docs_parses():
    spec = load_spec_dict(yaml.safe_load(EXAMPLE.read_text()))
    assert spec.class_names[:3] == ["normal", "defect", "dirt"] and len(spec.class_names) == 10
    assert spec.multitask["softmax"] == ["car_in_wash", "dashboard", "cup_holder", "glovebox", "washer_fluid", "seat"]
    assert spec.tasks["defect"] == ("normal", "defect")
    assert set(spec.external["defect"]) == {"ext_snow", "ext_after_snow", "ext_rain", "ext_after_rain"}


def test_ood_long_and_short_forms_and_round_trip():
    spec = load_spec_dict({**BASE, "ood": {"receipts": {"path": "ood/receipts", "val": "ood_val/receipts", "kind": "far"},
                                           "wheels": {"path": "ood/wheels", "kind": "near"},
                                           "documents": "ood/documents"}})
    assert spec.ood == {"receipts": "ood/receipts", "wheels": "ood/wheels", "documents": "ood/documents"}
    assert spec.ood_val == {"receipts": "ood_val/receipts"}
    assert spec.ood_kind == {"receipts": "far", "wheels": "near", "documents": None}
    d = spec.as_dict()
    assert d["ood"]["documents"] == "ood/documents"  # the short form stays short
    again = load_spec_dict(d)  # a checkpoint stores the spec as plain data and parses it again
    assert (again.ood, again.ood_val, again.ood_kind) == (spec.ood, spec.ood_val, spec.ood_kind)


def test_external_long_and_short_forms_and_round_trip():
    """An external set may name a val split: other images under the same shift, for choosing."""
    spec = load_spec_dict({**BASE, "external": {"dirt": {"ext_h1": {"path": "ext/h1", "val": "ext_val/h1"},
                                                         "ext_h2": "ext/h2", "ext_h3": {"path": "ext/h3"}}}})
    assert spec.external == {"dirt": {"ext_h1": "ext/h1", "ext_h2": "ext/h2", "ext_h3": "ext/h3"}}
    assert spec.external_val == {"dirt": {"ext_h1": "ext_val/h1"}}
    d = spec.as_dict()
    assert d["external"] == {"dirt": {"ext_h1": {"path": "ext/h1", "val": "ext_val/h1"}, "ext_h2": "ext/h2",
                                      "ext_h3": "ext/h3"}}
    again = load_spec_dict(d)
    assert (again.external, again.external_val) == (spec.external, spec.external_val)
    assert load_spec_dict({**BASE, "external": {"dirt": {"e": "ext/e"}}}).external_val == {}


def load_spec_dict(d):
    from data.spec import parse_spec
    return parse_spec(d, Path("/x"))


def test_samples_map_folders_to_classes(tmp_path):
    spec = load_spec(make_dataset(tmp_path, BASE))
    samples = spec.split_samples("train")
    assert [(p.parent.name, c) for p, c in samples] == [("0_NORMAL", "normal")] * 2 + [("2_DIRT", "dirt")] * 2


def test_missing_dataset_folder_and_spec(tmp_path):
    with pytest.raises(SpecError, match="dataset folder not found"):
        load_spec(tmp_path / "nope")
    with pytest.raises(SpecError, match=r"dataset.yaml: missing"):
        load_spec(tmp_path)


@pytest.mark.parametrize("text,match", [
    ("classes: [a, b\n", "not valid YAML"),
    ("- just a list\n", "must be a mapping"),
    ("classes: {a: A}\nsplits: {train: train}\n", "at least two class names"),
    ("classes: {a: A, b: B}\n", "'splits:'"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nclases: {}\n", r"unknown key\(s\) \['clases'\]"),
    ("classes: {Dirt: A, dirt: B}\nsplits: {train: t}\n", "'Dirt' and 'dirt' differ only in case"),
    ("classes: {a: X, b: x}\nsplits: {train: t}\n", "folder 'x' is given to both"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\ntasks: {t1: [a, c]}\n", "task 't1' names class 'c'"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\ntasks: {t1: [a]}\n", "two classes"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nmultitask: {negative: a, binary: [z]}\n", "multitask.binary names class 'z'"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nexternal: {t9: {s: s}}\n", "external suite 't9'"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: {path: o/w, kind: close}}\n", "ood.w.kind is 'close'; use one of near, far"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: {path: o/w, val: ./o/w}}\n", "ood.w.val './o/w' is also the reported folder of ood.w"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: o/w, v: {path: o/v, val: o/w}}\n", "ood.v.val 'o/w' is also the reported folder of ood.w"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: {path: o/w, vall: v/w}}\n", r"ood.w: unknown key\(s\) \['vall'\]"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: {val: v/w}}\n", "ood.w needs 'path:'"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: {path: o/w, val: ../v/w}}\n", "ood.w.val '../v/w' is outside the dataset root"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: {w: [o/w]}\n", "ood.w must be a folder or a mapping"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nood: [o/w]\n", "'ood:' must map set names"),
    (f"{EXT}{{s: {{path: e/s, vall: v/s}}}}}}\n", r"external.t.s: unknown key\(s\) \['vall'\]; the set takes path, val"),
    (f"{EXT}{{s: {{val: v/s}}}}}}\n", "external.t.s needs 'path:'"),
    (f"{EXT}{{s: {{path: e/s, val: [v/s]}}}}}}\n", "external.t.s.val must be a folder"),
    (f"{EXT}{{s: {{path: e/s, val: ''}}}}}}\n", "external.t.s.val must be a folder"),
    (f"{EXT}{{s: {{path: e/s, val: e/s/}}}}}}\n", "external.t.s.val 'e/s/' is also the reported folder of external.t.s"),
    (f"{EXT}{{s: e/s, r: {{path: e/r, val: e/s}}}}}}\n", "external.t.r.val 'e/s' is also the reported folder of external.t.s"),
    (f"{EXT}{{s: {{path: e/s, val: ../v/s}}}}}}\n", "external.t.s.val '../v/s' is outside the dataset root"),
    (f"{EXT}{{s: [e/s]}}}}\n", r"external.t.s must be a folder or a mapping \{path: ..., val: ...\}"),
    (f"{EXT}{{s: }}}}\n", "external.t.s must be a folder or a mapping"),
    (f"{EXT}[e/s]}}\n", "external.t must map set names to folders or to"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nexternal: [e/s]\n", "'external:' must map task names"),
])
def test_malformed_spec_errors_name_the_file_and_the_fix(tmp_path, text, match):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(SpecError, match=match) as e:
        load_spec(tmp_path)
    assert str(tmp_path / "dataset.yaml") in str(e.value)


@pytest.mark.parametrize("text,match", [
    ("classes: {a: A, b: B}\nsplits: {train: t}\ntasks: {'my task': [a, b]}\n", "task name 'my task' is not usable"),
    ("classes: {a: A, b: B}\nsplits: {train: t}\nimage_size: 96\n", r"unknown key\(s\) \['image_size'\]"),
])
def test_task_names_must_be_folder_names_and_image_size_is_no_key(tmp_path, text, match):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(SpecError, match=match):
        load_spec(tmp_path)


def test_spec_cli_checks_a_dataset_and_prints_what_run_reproduce_needs(tmp_path):
    root = make_dataset(tmp_path, BASE)
    assert run_cli("-m", "data.spec", root, "--tasks").stdout == "dirt\n"
    assert run_cli("-m", "data.spec", root, "--multitask").stdout == "no\n"
    assert "tasks dirt, multitask no" in run_cli("-m", "data.spec", root).stdout
    for f in (root / "val" / "2_DIRT").iterdir():
        f.unlink()
    proc = run_cli("-m", "data.spec", root, "--tasks", check=False)
    assert proc.returncode == 2 and proc.stdout == "" and "class 'dirt' has no images" in proc.stderr


def test_spec_cli_checks_each_external_set_and_its_val_split(tmp_path, capsys):
    """An external set and its val split must each hold images of the task's two classes."""
    from data.spec import main
    root = make_dataset(tmp_path, {**BASE, "external": {"dirt": {"ext_h1": {"path": "ext/h1", "val": "ext_val/h1"}}}})
    shutil.copytree(root / "train", root / "ext" / "h1")
    assert main([str(root)]) == 2 and f"{root / 'ext_val' / 'h1'}: folder not found" in capsys.readouterr().err
    shutil.copytree(root / "val", root / "ext_val" / "h1")
    assert main([str(root)]) == 0, capsys.readouterr().err
    shutil.rmtree(root / "ext_val" / "h1" / "2_DIRT")
    assert main([str(root)]) == 2 and "ext_val/h1: class 'dirt' has no images" in capsys.readouterr().err
    shutil.rmtree(root / "ext" / "h1" / "0_NORMAL")
    assert main([str(root)]) == 2 and "ext/h1: class 'normal' has no images" in capsys.readouterr().err


@pytest.mark.parametrize("splits,flags,missing,needs", [
    ({"train": "train"}, [], "val", "train.py chooses the best epoch (best.pt) on it"),
    ({"val": "val", "test": "test", "train": "train"}, ["--splits", "train,val,test,holdout"], "holdout", ""),
    ({"train": "train", "val": "val"}, ["--splits", "train,val,test"], "test", "evaluate.py reports on it"),
])
def test_spec_cli_refuses_a_spec_without_the_splits_a_step_needs(tmp_path, splits, flags, missing, needs):
    """Training needs train and val (run/reproduce.sh's report: test too): `python -m data.spec`
    says which split is missing and what to add, in one line, before anything trains."""
    root = make_dataset(tmp_path, {**BASE, "splits": splits})
    proc = run_cli("-m", "data.spec", root, *flags, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: {root / 'dataset.yaml'}: no '{missing}' split")
    assert needs in proc.stderr and f"add it under 'splits:' (e.g. '{missing}: {missing}'" in proc.stderr


def test_generated_held_out_and_concatenated_specs_pass_the_spec_cli(tmp_path, capsys):
    """What data.generate (with --hold-out) and data.concat (and its add) write is ready to train."""
    from data.concat import concat
    from data.concat_add import add_task
    from data.generate import generate
    from data.spec import main
    generate(tmp_path / "old", seed=0, size=16, train=1, val=1, test=1, ext=1, ood=1, multilabel=1, workers=1,
             montage=False, hold_out="seat", hold_out_dir=tmp_path / "seat")
    add_task(tmp_path / "old", tmp_path / "seat", tmp_path / "plus")
    dirt = make_dataset(tmp_path / "dirt", BASE)
    defect = make_dataset(tmp_path / "defect", {**BASE, "classes": {"normal": "0_NORMAL", "defect": "1_DEFECT"},
                                                "tasks": {"defect": ["normal", "defect"]}}, size=20)  # no duplicates
    concat({"dirt": dirt, "defect": defect}, tmp_path / "merged", {})
    for root in ("old", "plus", "merged"):
        assert main([str(tmp_path / root), "--splits", "train,val"]) == 0, capsys.readouterr().err
    assert main([str(tmp_path / "plus"), "--splits", "train,val,test"]) == 0, capsys.readouterr().err


def test_empty_class_folder_and_unknown_folder(tmp_path):
    root = make_dataset(tmp_path, BASE)
    for f in (root / "train" / "2_DIRT").iterdir():
        f.unlink()
    with pytest.raises(SpecError, match="class 'dirt' has no images .*2_DIRT"):
        load_spec(root).split_samples("train")
    (root / "val" / "3_TYPO").mkdir()
    with pytest.raises(SpecError, match="3_TYPO: folder is no class"):
        load_spec(root).split_samples("val")


def test_unknown_split_is_named(tmp_path):
    with pytest.raises(SpecError, match="no split 'test'"):
        load_spec(make_dataset(tmp_path, BASE)).split_dir("test")


@pytest.mark.parametrize("kind", ["corrupt", "empty", "text", "truncated"])
def test_bad_image_files_raise_image_error_naming_the_file(tmp_path, kind):
    path = tmp_path / "bad.jpg"
    good = tmp_path / "good.jpg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(good)
    path.write_bytes({"corrupt": b"\xff\xd8\xff\xe0garbage" * 10, "empty": b"", "text": b"hello",
                      "truncated": good.read_bytes()[:200]}[kind])
    with pytest.raises(ImageError, match="bad.jpg"):
        load_rgb(path)


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "I;16", "L", "P"])
def test_unusual_modes_decode_to_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (10, 6)).save(path)
    im = load_rgb(path)
    assert im.mode == "RGB" and im.size == (10, 6)


def test_training_skips_counts_and_lists_a_corrupt_image(tmp_path):
    root = make_dataset(tmp_path / "ds", BASE, n=4)
    bad = root / "train" / "2_DIRT" / "broken.jpg"
    bad.write_bytes(b"not an image")
    proc = run_cli("train.py", "--data", root, "--paradigm", "uni", "--epochs", "1", "--artifacts",
                   tmp_path / "art", *TINY_TRAIN)
    listed = (tmp_path / "art" / "uni" / "exp1" / "skipped.txt").read_text()
    assert "broken.jpg" in listed and "skipped 1 unreadable image" in proc.stderr
    assert (tmp_path / "art" / "uni" / "exp1" / "best.pt").is_file()


def test_train_cli_reports_spec_errors_in_one_line(tmp_path):
    root = make_dataset(tmp_path / "ds", BASE)
    proc = run_cli("train.py", "--data", root, "--paradigm", "task", "--task", "defect", *TINY_TRAIN, check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "--task, one of dirt" in proc.stderr
    proc = run_cli("train.py", "--data", tmp_path / "nowhere", *TINY_TRAIN, check=False)
    assert proc.returncode != 0 and "dataset folder not found" in proc.stderr and "Traceback" not in proc.stderr
