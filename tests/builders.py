"""Tiny data for the tests, built one way each: the embedded dataset at its smallest, a dataset of
one's own spec, a spec without files, and image files good and bad for the pipeline."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

# One colour per class (cycled), so that a model trained for one epoch sees something to learn.
COLOURS = [(90, 90, 90), (200, 40, 40), (120, 90, 30), (40, 160, 200), (60, 170, 60), (200, 200, 60)]

TOY = {"name": "toy", "classes": {c: c for c in ("normal", "defect", "dirt", "bubble_wash", "seat", "dashboard")},
       "splits": {"train": "train"},
       "tasks": {"defect": ["normal", "defect"], "dirt": ["normal", "dirt"], "seat": ["normal", "seat"]},
       "multitask": {"negative": "normal", "binary": ["defect", "dirt", "bubble_wash"]}}


def embedded_dataset(out: Path) -> Path:
    """The embedded SOFAR-like dataset (data.generate, every split and special set) at its smallest:
    40 px, 6/3/3 images per class; small enough for a 1-epoch PMG run in seconds."""
    from data.generate import generate
    generate(out, seed=0, size=40, train=6, val=3, test=3, ext=2, ood=2, multilabel=2, workers=1, montage=False)
    return out


def make_dataset(root: Path, spec: dict, n: int = 2, size: int = 16) -> Path:
    """A dataset of one's own: `spec` written as its dataset.yaml, and `n` images of each class in
    every split the spec names (in the class's folder, the first one when it has aliases)."""
    rng = np.random.default_rng(0)
    root = Path(root)
    for split in spec["splits"].values():
        for k, folders in enumerate(spec["classes"].values()):
            d = root / split / (folders if isinstance(folders, str) else folders[0])
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image(rng, COLOURS[k % len(COLOURS)], size).save(d / f"{i}.jpg", quality=90)
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def toy_spec():
    """`TOY` parsed, with no files behind it: for the models and the per-paradigm rules."""
    from data.spec import parse_spec
    return parse_spec(TOY, Path("/nonexistent/toy"))


def image(rng, colour, size=32) -> Image.Image:
    a = np.clip(np.array(colour, np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def write_images(folder: Path, n: int, seed: int = 1, size: int = 32, mtime: float | None = None) -> list[Path]:
    """`n` small JPEGs (normal-, defect- and dirt-coloured in turn) in subfolders of 500."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"part{i // 500}" / f"img_{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        image(rng, COLOURS[i % 3], size).save(p, quality=85)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        paths.append(p)
    return paths


def write_deep_image(root: Path, chars: int = 3200, mtime: float | None = None) -> Path:
    """One small JPEG about `chars` characters below `root`, in folders of 199-character names (a
    file system allows 255 per name and 4096 per path): an image id past a database index's limit."""
    folder = Path(root)
    while len(str(folder)) - len(str(root)) < chars - 20:  # + part0/img_00000.jpg
        folder = folder / ("d" * 199)
    return write_images(folder, 1, seed=3, mtime=mtime)[0]


def write_bad_files(folder: Path) -> dict[str, str]:
    """name -> expected status class ('error' or 'good') for every awkward kind of file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    ok = image(rng, COLOURS[2], 48)
    buf = folder / "whole.jpg"
    ok.save(buf, quality=90)
    data = buf.read_bytes()
    buf.unlink()
    (folder / "corrupt.jpg").write_bytes(data[:20] + bytes(rng.integers(0, 256, 400, dtype=np.uint8)) + data[420:])
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "notimage.png").write_text("this is a receipt, not a picture\n")
    ok.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((np.asarray(ok.convert("L"), np.uint16) * 257)).save(folder / "gray16.png")
    rgba = ok.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    # A decompression bomb: a tiny file that declares 20,000 x 20,000 pixels.
    Image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)
    return {"corrupt.jpg": "error", "truncated.jpg": "error", "zero.jpg": "error", "notimage.png": "error",
            "bomb.png": "error", "cmyk.jpg": "good", "gray16.png": "good", "rgba.png": "good"}
