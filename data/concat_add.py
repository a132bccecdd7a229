"""Add one task to a concatenated dataset: `python -m data.concat add`.

    python -m data.concat add --dataset datasets/sofar --task-data /data/tyre_damage --out datasets/sofar+tyre

The task data is a folder tree `<split>/<class>/*.jpg` (or a folder with its own dataset.yaml) that
holds exactly one class the dataset does not have (the task's positive class) and, optionally,
images of classes it has (a negative such as `clean`, merged with `--alias clean=normal`). The
new class needs images in every split of the dataset. OUT is the dataset with its own layout,
spec and files kept, plus `<split>/<class folder>/` of the new class, and its spec gains the class
(last, so the old label indices stay), the task `<task>: [negative, class]`, and, with `--binary`,
a multi-task sigmoid head (else the class joins the multi-task softmax head). The same duplicate
and leak report as concat (by content hash, between the new images and the dataset's split
images) is printed and written to OUT/add_report_<task>.json; agreeing duplicates keep one copy,
disagreeing ones move to a multi-label set. The dataset itself is never changed.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from data.concat import (LINKS, building, ConcatError, Item, check_arguments, check_classes, check_images,
                         parse_pairs, place, read_source, resolve_duplicates)
from data.spec import NAME, Spec, load_spec, parse_spec, write_spec


def new_class(spec: Spec, classes: list[str], where: Path) -> str:
    """The one class of the task data that the dataset does not have."""
    known = {c.lower(): c for c in spec.classes}
    for c in classes:
        if c not in spec.classes and c.lower() in known:
            raise ConcatError(f"{where}: class '{c}' differs only in case from '{known[c.lower()]}' of {spec.file}; "
                              f"merge them with --alias {c}={known[c.lower()]}")
    new = [c for c in classes if c not in spec.classes]
    if not new:
        raise ConcatError(f"{where}: its classes ({', '.join(classes)}) are all classes of {spec.file} already; "
                          f"nothing to add (the task's positive class must be new: rename its folder or fix --alias)")
    if len(new) > 1:
        raise ConcatError(f"{where}: classes {', '.join(new)} are all new to {spec.file}; a task adds one class: "
                          f"merge the others into classes the dataset has with --alias OLD=NEW")
    return new[0]


def choose_negative(spec: Spec, others: list[str], negative: str | None, where: Path) -> str:
    """--negative, else the task data's one other class, else the dataset's usual negative."""
    if negative is not None:
        if negative not in spec.classes:
            raise ConcatError(f"--negative {negative}: not a class of {spec.file} ({', '.join(spec.classes)})")
        return negative
    if len(others) == 1:
        return others[0]
    usual = Counter(n for n, _ in spec.tasks.values())
    if len(others) > 1 or not (spec.multitask or usual):
        raise ConcatError(f"{where}: cannot tell the task's negative class; pass --negative CLASS")
    return spec.multitask["negative"] if spec.multitask else usual.most_common(1)[0][0]


def add_task(dataset: Path, task_data: Path, out: Path, aliases: dict[str, str] | None = None,
             task: str | None = None, negative: str | None = None, binary: bool = False, link: str = "copy",
             skip_bad: bool = False, force: bool = False, name: str | None = None) -> dict:
    """Write `out` = `dataset` + the one new class of `task_data`; returns the report (also in out)."""
    dataset, task_data, out, aliases = Path(dataset).absolute(), Path(task_data), Path(out), aliases or {}
    check_arguments({"dataset": dataset, "task": task_data}, out, link, force)
    spec = load_spec(dataset)
    src = read_source("task", task_data, aliases)
    check_classes([src], aliases)
    cls = new_class(spec, src.classes, src.where)
    task = task or next((t for t, (_, p) in src.tasks.items() if p == cls), cls)
    if not NAME.match(task) or task in spec.tasks:
        raise ConcatError(f"--task {task}: " + (f"already a task of {spec.file}; name the new task differently"
                                                if task in spec.tasks else "not usable as a folder name"))
    neg = choose_negative(spec, [c for c in src.classes if c != cls], negative, src.where)
    if binary and not spec.multitask:
        raise ConcatError(f"--binary: {spec.file} has no 'multitask:' section to add a sigmoid head to; drop --binary")
    for s in dict.fromkeys(i.split for i in src.items):
        if s not in spec.splits:
            raise ConcatError(f"{task_data}: split '{s}' is no split of {spec.file} ({', '.join(spec.splits)}); "
                              f"rename the folder")
    lacking = [s for s in spec.splits if not any(i.split == s and i.cls == cls for i in src.items)]
    if lacking:
        raise ConcatError(f"{task_data}: no '{cls}' images in split(s) {', '.join(lacking)}; every split of "
                          f"{spec.file} needs images of the new class")

    old = [Item("dataset", s, c, p) for s in spec.splits for p, c in spec.split_samples(s)]
    new = [i._replace(source=task) for i in src.items]
    hashes, bad = check_images(old + new, skip_bad)
    new_hashes = {hashes[i.path] for i in new if i.path in hashes}
    involved = [i for i in old if hashes.get(i.path) in new_hashes] + new  # only groups with a new image
    removed, moved, dup_report = resolve_duplicates(involved, hashes, {n for n, _ in spec.tasks.values()} | {neg})
    dropped = {involved[k].path for k in removed}
    kept_new = [i for i in new if i.path not in dropped and i.path in hashes]

    folders = {i.path.parent.name for i in new if i.cls == cls}
    folder = folders.pop() if len(folders) == 1 and NAME.match(next(iter(folders))) else cls
    d = spec.as_dict()
    d["name"] = name or f"{spec.name}+{cls}"
    d["classes"][cls] = folder
    d["tasks"][task] = [neg, cls]
    if binary:
        d["multitask"]["binary"].append(cls)
    ml_folders = {tuple(sorted(m.labels)): m.path for m in spec.multilabel.values()}
    for labels in moved:
        if labels not in ml_folders:
            ml_folders[labels] = f"multilabel/{'_and_'.join(labels)}"
            d.setdefault("multilabel", {})["_and_".join(labels)] = {"path": ml_folders[labels], "labels": list(labels)}
    if link == "symlink":
        d["allow_outside_root"] = True
    parse_spec(d, out)  # a spec error must come before anything is written

    with building(out) as tmp:
        used: set[Path] = set()
        for f in sorted(p for p in dataset.rglob("*") if p.is_file() and p not in dropped):
            if f != spec.file:
                place(f, tmp / f.relative_to(dataset).parent, f.name, link, used)
        class_folder = {c: a[0] for c, a in spec.classes.items()} | {cls: folder}
        for i in kept_new:
            place(i.path, tmp / spec.splits[i.split] / class_folder[i.cls], f"{task}__{i.path.name}", link, used)
        ml_report = {}
        for labels, its in moved.items():
            files = [place(i.path, tmp / ml_folders[labels], f"{i.source}__{i.path.name}", link, used) for i in its]
            ml_report["_and_".join(labels)] = {"labels": list(labels), "images": [str(f.relative_to(tmp)) for f in files]}
        write_spec(d, tmp)
        kept_old = [i for i in old if i.path not in dropped]
        count = lambda its: {s: dict(Counter(i.cls for i in its if i.split == s)) for s in spec.splits}  # noqa: E731
        after = count(kept_old + kept_new)
        report = {
            "out": str(out), "name": d["name"], "link": link, "aliases": aliases,
            "sources": {"dataset": {"path": str(dataset), "spec": True, "classes": spec.class_names},
                        task: {"path": str(task_data), "spec": src.spec_file is not None, "classes": src.classes}},
            "classes": list(d["classes"]), "splits": list(spec.splits), "tasks": d["tasks"],
            "counts_before": {"dataset": count(old), task: count(new)}, "counts_after": after,
            "duplicates": dup_report, "multilabel": ml_report, "skipped_bad": bad,
            "missing": {s: [c for c in d["classes"] if not after[s].get(c)] for s in spec.splits},
            "added": {"class": cls, "folder": folder, "task": task, "negative": neg,
                      "multitask": None if not spec.multitask else ("binary" if binary else "softmax"),
                      "dataset": str(dataset)},
        }
        (tmp / f"add_report_{task}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m data.concat add", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True, type=Path, help="the concatenated dataset (holds dataset.yaml)")
    ap.add_argument("--task-data", required=True, type=Path,
                    help="the new task's <split>/<class>/ images: one new class, optionally negatives")
    ap.add_argument("--out", required=True, type=Path, help="the new dataset folder (the dataset is not changed)")
    ap.add_argument("--alias", action="append", default=[], metavar="OLD=NEW",
                    help="merge the task data's class OLD into the dataset's class NEW (e.g. clean=normal)")
    ap.add_argument("--task", help="name of the new task (default: the new class)")
    ap.add_argument("--negative", help="the task's negative class (default: the task data's other class, else "
                                       "the spec's multi-task negative, else its tasks' usual negative)")
    ap.add_argument("--binary", action="store_true",
                    help="give the new class its own multi-task sigmoid head (default: it joins the softmax head)")
    ap.add_argument("--link", choices=LINKS, default="copy", help="how files are placed (default: copy)")
    ap.add_argument("--name", help="dataset name in the written spec (default: <name>+<class>)")
    ap.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed in the report)")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return ap


def run(argv: list[str]) -> dict:
    a = parser().parse_args(argv)
    aliases = parse_pairs(a.alias, "--alias", "OLD=NEW", None, NAME)
    return add_task(a.dataset, a.task_data, a.out, aliases, a.task, a.negative, a.binary, a.link, a.skip_bad,
                    a.force, a.name)
