"""`python -m pipeline export-reviews`: the reviewed images as dataset folders, the corrections'
way back into training.

    OUT/labelled/<split>/<label>/   images with one label: `python -m data.concat add --task-data OUT/labelled`
    OUT/multilabel/<a>_and_<b>/     images with several labels (a multi-label set)
    OUT/ood/reviewed/               images marked irrelevant (an OOD set)
    OUT/dataset.fragment.yaml       the spec keys that name these folders, to merge into a dataset.yaml
    OUT/reviews.csv                 one line per exported image: where it came from and who decided

Each image's latest review counts. The labelled images of a label are shared out over the splits
(default train 0.7, val 0.15, test 0.15) in the order of their ids' SHA-256, each split getting
one first when there are enough, so the same reviews always give the same folders and
`data.concat add` finds the new class in every split. Files are copied, named by a hash of the
image id and the file's own name made safe (a hostile name cannot climb out of its folder).
"""
from __future__ import annotations

import csv
import hashlib
import math
import re
import shutil
from pathlib import Path

import yaml

from pipeline.review import store
from pipeline.review.roots import Roots
from pipeline.table import PredictionTable

DEFAULT_SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}
OOD_SET = "reviewed"


class ExportError(ValueError):
    """An export that cannot be written; the message says why."""


def parse_splits(text: str) -> dict[str, float]:
    """`train=0.7,val=0.15,test=0.15` as {split: share}."""
    try:
        splits = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        splits = {}
    if (not splits or "train" not in splits or any(not re.fullmatch(r"[a-z][a-z0-9_]*", k) for k in splits)
            or any(not (math.isfinite(v) and v > 0) for v in splits.values())):
        raise ExportError(f"--splits {text}: give split=share pairs with a train split, e.g. "
                          f"train=0.7,val=0.15,test=0.15")
    total = sum(splits.values())
    return {k: v / total for k, v in splits.items()}


def share_out(ids: list[str], splits: dict[str, float]) -> dict[str, str]:
    """{image id: split}: one image per split first (in the order given, while there are images),
    the rest by share (largest remainder), in the order of the ids' SHA-256."""
    order = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    names = list(splits)
    counts = {k: int(j < len(order)) for j, k in enumerate(names)}
    rest = len(order) - sum(counts.values())
    exact = {k: splits[k] * rest for k in names}
    for k in names:
        counts[k] += math.floor(exact[k])
    left = len(order) - sum(counts.values())
    for k in sorted(names, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True)[:left]:
        counts[k] += 1
    out, start = {}, 0
    for k in names:
        out.update(dict.fromkeys(order[start:start + counts[k]], k))
        start += counts[k]
    return out


def file_name(image_id: str, source: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).name).lstrip(".")[-80:] or "image"
    return f"{hashlib.sha256(image_id.encode()).hexdigest()[:12]}_{safe}"


def export(table: PredictionTable, out: Path, roots: Roots | None = None,
           splits: dict[str, float] | None = None, force: bool = False) -> dict:
    """Write the reviewed images of `table` under `out`; returns a summary (also what is printed)."""
    splits, out = splits or DEFAULT_SPLITS, Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {out}: not empty; give a new folder or --force to replace it")
    store.create(table)
    reviews = store.latest(table)
    if not reviews:
        raise ExportError(f"the table {table.name} has no reviews yet; record some in `python -m pipeline review`")
    if out.exists():
        shutil.rmtree(out)
    single: dict[str, list[dict]] = {}
    for r in reviews:
        if len(r["labels"]) == 1:
            single.setdefault(r["labels"][0], []).append(r)
    split_of = {}
    for label, rs in single.items():
        split_of.update(share_out([r["image_id"] for r in rs], splits))
    lines, missing, multilabel = [], [], {}
    for r in reviews:
        path = where(r["source"], roots)
        if path is None:
            missing.append(r["source"])
            continue
        if not r["labels"]:
            folder = Path("ood") / OOD_SET
        elif len(r["labels"]) == 1:
            folder = Path("labelled") / split_of[r["image_id"]] / r["labels"][0]
        else:
            name = "_and_".join(r["labels"])
            multilabel[name] = {"path": f"multilabel/{name}", "labels": r["labels"]}
            folder = Path("multilabel") / name
        (out / folder).mkdir(parents=True, exist_ok=True)
        target = folder / file_name(r["image_id"], r["source"])
        shutil.copyfile(path, out / target)
        lines.append({"file": target.as_posix(), "image_id": r["image_id"], "model_version": r["model_version"],
                      "source": r["source"], "status": r["status"], "predicted": r["top1_label"] or "",
                      "verdict": r["verdict"], "labels": " ".join(r["labels"]), "reviewer": r["reviewer"],
                      "reviewed_at": r["reviewed_at"]})
    fragment = {"classes": {label: label for label in sorted(single)},
                "splits": {s: f"labelled/{s}" for s in splits}}
    if any(not r["labels"] for r in reviews):
        fragment["ood"] = {OOD_SET: {"path": f"ood/{OOD_SET}", "kind": "near"}}
    if multilabel:
        fragment["multilabel"] = multilabel
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.fragment.yaml").write_text(yaml.safe_dump(fragment, sort_keys=False))
    with open(out / "reviews.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(lines[0]) if lines else ["file"])
        w.writeheader()
        w.writerows(lines)
    counts = {}
    for line in lines:
        key = line["file"].split("/")[0]
        counts[key] = counts.get(key, 0) + 1
    return {"out": str(out), "reviews": len(reviews), "exported": len(lines), **counts,
            "classes": sorted(single), "missing": missing}


def where(source: str, roots: Roots | None) -> str | None:
    """The file of a row's source: inside the roots when given, else the path as recorded."""
    if roots is not None:
        found = roots.locate(source)
        return None if found is None else str(Path(roots.roots[found[0]]) / found[1])
    return source if Path(source).is_file() else None

