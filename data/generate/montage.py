"""A contact sheet of a generated dataset: one labelled row per class, then one per external,
OOD (labelled near or far) and multi-label set, built from the images on disk (rows follow the
folder's dataset.yaml).

    python -m data.generate.montage DIR [--out PATH] [--per-row 8] [--tile 72]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFont

IMAGE_EXT = (".jpg", ".jpeg", ".png")
MAX_BYTES = 500_000  # above it, a palette; docs/montage.png is in the repository and on the README
TILE = 72  # at most, in pixels: 23 rows of 96-pixel tiles make a PNG of over 1 MB


def _images(folder: Path, n: int) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXT)[:n]


def rows(root: Path, per_row: int) -> list[tuple[str, list[Path]]]:
    spec = yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8"))
    folders = {c: (f if isinstance(f, str) else f[0]) for c, f in spec["classes"].items()}
    out = []
    for i, (c, f) in enumerate(folders.items()):
        imgs = []
        for split in spec["splits"].values():  # the first split that has the class
            imgs = _images(root / split / f, per_row)
            if imgs:
                break
        out.append((f"{i} {c}", imgs))
    for task, sets in (spec.get("external") or {}).items():
        pos = spec["tasks"][task][1]
        for name, entry in sets.items():  # the reported images; the long form names a val split too
            path = entry["path"] if isinstance(entry, dict) else entry
            out.append((f"{name.removeprefix('ext_')}: {pos}", _images(root / path / folders[pos], per_row)))
    for name, entry in (spec.get("ood") or {}).items():  # the reported images; the long form names the kind
        path, kind = (entry["path"], entry.get("kind")) if isinstance(entry, dict) else (entry, None)
        out.append((f"{kind or 'ood'}: {name}", _images(root / path, per_row)))
    for name, m in (spec.get("multilabel") or {}).items():
        out.append(("multi: " + "+".join(m["labels"]), _images(root / m["path"], per_row)))
    return out


def build(root, out, per_row: int = 8, tile: int = TILE) -> Path:
    root, out = Path(root), Path(out)
    table = rows(root, per_row)
    first = next((p[0] for _, p in table if p), None)
    if first:
        with Image.open(first) as im:
            tile = min(tile, im.size[0])
    try:
        font = ImageFont.load_default(size=max(10, tile // 7))
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    label_w = int(tile * 1.9)
    sheet = Image.new("RGB", (label_w + per_row * tile, len(table) * tile), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, (label, paths) in enumerate(table):
        d.text((6, r * tile + tile // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
        for c, p in enumerate(paths):
            with Image.open(p) as im:
                sheet.paste(im.convert("RGB").resize((tile, tile), Image.LANCZOS), (label_w + c * tile, r * tile))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:  # photos compress poorly in PNG: fall back to a palette
        sheet.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.generate.montage", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="a generated dataset folder (with dataset.yaml)")
    ap.add_argument("--out", help="PNG to write (default: ROOT/montage.png)")
    ap.add_argument("--per-row", type=int, default=8)
    ap.add_argument("--tile", type=int, default=TILE, help=f"largest tile side in pixels (default {TILE})")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not (root / "dataset.yaml").is_file():
        print(f"error: {root} has no dataset.yaml; generate it with `python -m data.generate --out {root}`",
              file=sys.stderr)
        return 2
    print(build(root, a.out or root / "montage.png", a.per_row, a.tile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
