"""Inputs that cannot escape or explode: links and spec paths that leave the dataset
root, symlink loops, YAML that expands without bound, and files that are no files."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from data.generate import generate
from data.images import ImageError, content_hash, load_rgb
from data.spec import SpecError, load_spec, parse_spec, write_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generated") / "ds"
    generate(out, seed=0, size=40, train=2, val=1, test=1, ext=1, ood=1, multilabel=1, workers=1, montage=False)
    return out


@pytest.fixture
def data(generated, tmp_path) -> Path:
    """A fresh copy of the tiny embedded dataset that a test may break."""
    return Path(shutil.copytree(generated, tmp_path / "ds", symlinks=True))


def edit_spec(root: Path, edit) -> None:
    spec = yaml.safe_load((root / "dataset.yaml").read_text())
    edit(spec)
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def check_cli(root: Path) -> subprocess.CompletedProcess:
    """`python -m data.spec DIR`, the check run/reproduce.sh runs before training."""
    return subprocess.run([sys.executable, "-m", "data.spec", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def outside_image(data: Path, tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.jpg"
    secret.parent.mkdir()
    shutil.copy(next((data / "train" / "2_DIRT").iterdir()), secret)
    return secret


# --- symbolic links ------------------------------------------------------------------------------

def link_image(data, secret):
    link = data / "train" / "2_DIRT" / "leak.jpg"
    link.symlink_to(secret)
    return link, secret, lambda spec: spec.split_samples("train")


def link_relative_image(data, secret):
    link = data / "train" / "2_DIRT" / "leak.jpg"
    link.symlink_to(Path("../../..") / "outside" / "secret.jpg")  # climbs out of the root
    return link, secret, lambda spec: spec.split_samples("train")


def link_class_folder(data, secret):
    link = data / "val" / "2_DIRT"
    shutil.move(link, secret.parent / "2_DIRT")
    link.symlink_to(secret.parent / "2_DIRT")
    return link, secret.parent / "2_DIRT", lambda spec: spec.split_samples("val")


def link_split_folder(data, secret):
    link = data / "test"
    shutil.move(link, secret.parent / "test")
    link.symlink_to(secret.parent / "test")
    return link, secret.parent / "test", lambda spec: spec.split_samples("test")


def link_ood_image(data, secret):
    link = data / "ood" / "receipts" / "leak.png"
    link.symlink_to(secret)
    return link, secret, lambda spec: spec.flat_images(spec.ood["receipts"])


LINKS = [link_image, link_relative_image, link_class_folder, link_split_folder, link_ood_image]


@pytest.mark.parametrize("make_link", LINKS, ids=lambda f: f.__name__)
def test_a_link_out_of_the_root_is_refused_naming_link_and_target(data, tmp_path, make_link):
    link, target, listing = make_link(data, outside_image(data, tmp_path))
    with pytest.raises(SpecError, match=f"{re.escape(str(link))}: symbolic link to "
                                        f"{re.escape(str(target.resolve()))}, outside the dataset root"):
        listing(load_spec(data))


def test_the_spec_can_allow_links_out_of_the_root(data, tmp_path):
    link, _, listing = link_image(data, outside_image(data, tmp_path))
    edit_spec(data, lambda s: s.update(allow_outside_root=True))
    assert link in [p for p, _ in listing(load_spec(data))]


@pytest.mark.parametrize("loop", ["self", "pair", "class folder"])
def test_a_symlink_loop_is_reported_not_followed(data, loop):
    folder = data / "train" / "2_DIRT"
    if loop == "self":
        (folder / "loop.jpg").symlink_to("loop.jpg")
    elif loop == "pair":
        (folder / "a.jpg").symlink_to("b.jpg")
        (folder / "b.jpg").symlink_to("a.jpg")
    else:
        shutil.rmtree(folder)
        folder.symlink_to("2_DIRT")
    with pytest.raises(SpecError, match=r"symbolic link loop"):
        load_spec(data).split_samples("train")
    proc = check_cli(data)
    assert proc.returncode == 2 and "symbolic link loop" in proc.stderr and "Traceback" not in proc.stderr


def test_a_link_to_an_enclosing_folder_is_not_walked(data, capsys):
    up = data / "train" / "2_DIRT" / "up.jpg"
    up.symlink_to("..")  # a folder with an image name, pointing at its own parent
    samples = load_spec(data).split_samples("train")
    assert up not in [p for p, _ in samples] and len(samples) == 20
    assert f"{up}: skipped, a folder" in capsys.readouterr().err


# --- paths named by the spec ---------------------------------------------------------------------

def _set_external(spec, path):
    spec["external"]["defect"]["ext_snow"] = path


def _set_multilabel(spec, path):
    spec["multilabel"]["defect_and_dirt"]["path"] = path


PATHS = {
    "splits.val": lambda s, p: s["splits"].update(val=p),
    "external.defect.ext_snow": _set_external,
    "external.defect.ext_snow.val": lambda s, p: s["external"]["defect"]["ext_snow"].update(val=p),
    "ood.receipts": lambda s, p: s["ood"].update(receipts=p),
    "multilabel.defect_and_dirt": _set_multilabel,
}


@pytest.mark.parametrize("key", PATHS)
@pytest.mark.parametrize("path", ["../elsewhere", "sub/../../elsewhere", "/elsewhere"])
def test_a_spec_path_outside_the_root_is_refused(data, key, path):
    edit_spec(data, lambda s: PATHS[key](s, path))
    with pytest.raises(SpecError, match=f"{key} '{re.escape(path)}' is outside the dataset root.*allow_outside_root"):
        load_spec(data)


@pytest.mark.parametrize("folder", ["../2_DIRT", "a/2_DIRT", "..", "."])
def test_a_class_folder_is_a_plain_name(data, folder):
    edit_spec(data, lambda s: s["classes"].update(dirt=folder))
    with pytest.raises(SpecError, match=f"class 'dirt' names folder '{re.escape(folder)}'; a class folder is one"):
        load_spec(data)


@pytest.mark.parametrize("absolute", [True, False])
def test_the_spec_can_allow_data_outside_the_root(data, tmp_path, absolute):
    val = shutil.move(data / "val", tmp_path / "elsewhere")
    edit_spec(data, lambda s: s.update(allow_outside_root=True, splits={**s["splits"],
                                       "val": str(val) if absolute else "../elsewhere"}))
    spec = load_spec(data)
    assert len(spec.split_samples("val")) == 10
    # a checkpoint keeps the spec as plain data and parses it again without the folder
    assert parse_spec(spec.as_dict(), Path(".")).allow_outside_root
    edit_spec(data, lambda s: s.update(allow_outside_root="yes"))
    with pytest.raises(SpecError, match="'allow_outside_root:' must be true or false"):
        load_spec(data)


# --- YAML that explodes --------------------------------------------------------------------------

# a "billion laughs" document that is otherwise a valid spec: 9**9 strings once str() expands the name
LAUGHS = ("classes: {a: A, b: B}\nsplits: {train: t}\nood:\n  l0: &l0 lol\n"
          + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
          + "name: [" + ", ".join(["*l8"] * 9) + "]\n")


@pytest.mark.parametrize("text,match", [
    (LAUGHS, r"alias \*l0 .*write the value out"),
    ("classes: &c {a: A, b: B}\nsplits: {train: t}\nother: *c\n", r"alias \*c "),
    ("classes: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested too deeply"),
])
def test_yaml_that_expands_without_bound_is_refused(tmp_path, text, match):
    (tmp_path / "dataset.yaml").write_text(text)
    with pytest.raises(SpecError, match=match) as e:
        load_spec(tmp_path)
    assert str(tmp_path / "dataset.yaml") in str(e.value)


def test_an_oversized_spec_is_refused_unread(tmp_path):
    with open(tmp_path / "dataset.yaml", "wb") as f:
        f.truncate(64 << 20)  # 64 MiB of holes: nothing is written, but reading it would take it all
    with pytest.raises(SpecError, match="dataset.yaml: 67,108,864 bytes; a spec is a few kB"):
        load_spec(tmp_path)


# --- files that are no files ---------------------------------------------------------------------

def finishes(fn, fifo: Path, seconds: float = 10.0):
    """fn() run in a thread; if it blocks on the FIFO, a writer releases it and the test fails."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a reader is waiting: this releases it
        t.join(seconds)
        pytest.fail(f"blocked on the FIFO {fifo}")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_fifos_and_sockets_are_skipped_and_listed_never_opened(data, monkeypatch, capsys):
    from data.folders import scan_images
    folder = data / "train" / "2_DIRT"
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    monkeypatch.chdir(folder)  # a socket path must be short: bind it relative to its folder
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock.png")
    try:
        samples = finishes(lambda: load_spec(data).split_samples("train"), fifo)
        images, skipped = scan_images(folder, data)
    finally:
        sock.close()
    assert len(samples) == 20 and not {fifo, folder / "sock.png"} & {p for p, _ in samples}
    assert skipped == [(fifo, "a FIFO"), (folder / "sock.png", "a socket")] and len(images) == 2
    err = capsys.readouterr().err
    assert f"warning: {fifo}: skipped, a FIFO" in err and f"warning: {folder / 'sock.png'}: skipped, a socket" in err
    proc = check_cli(data)
    assert proc.returncode == 0 and f"{fifo}: skipped, a FIFO" in proc.stderr


def test_reading_a_fifo_as_an_image_fails_at_once(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for read in (load_rgb, content_hash):
        with pytest.raises(ImageError, match=f"{re.escape(str(fifo))}: not a regular file \\(a FIFO\\)"):
            finishes(lambda: read(fifo), fifo)


def test_a_spec_written_by_the_project_has_no_aliases(tmp_path):
    pair = ["normal", "dirt"]  # one list used twice would be dumped as an anchor and an alias
    write_spec({"classes": {"normal": "0_NORMAL", "dirt": "2_DIRT"}, "splits": {"train": "train"},
                "tasks": {"dirt": pair, "dirt_again": pair}}, tmp_path)
    assert load_spec(tmp_path).tasks["dirt_again"] == ("normal", "dirt")
