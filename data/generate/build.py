"""Lays out the whole stand-in dataset: which image goes where, seeded how, rendered by whom.

Every image has its own RNG seeded by (seed, set, class, index), so the bytes of a file do not
depend on the worker count, the order of work, or the other counts requested.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from pathlib import Path

import numpy as np

from data.spec import write_spec

from . import documents, interior, marks, near_ood, wash, weather
from .common import finish

CLASSES = {  # class name -> folder, in label order
    "normal": "0_NORMAL",
    "defect": "1_DEFECT",
    "dirt": "2_DIRT",
    "bubble_wash": "3_BUBBLE_WASH",
    "car_in_wash": "4_CARS_INSIDE_OF_THE_WASHING_MACHINE",
    "dashboard": "5_DASHBOARD",
    "cup_holder": "6_CUP_HOLDER",
    "glovebox": "7_GLOVEBOX",
    "washer_fluid": "8_WASHER_FLUID",
    "seat": "9_SEAT",
}
SPLITS = ("train", "val", "test")
TASKS = {"defect": ("normal", "defect"), "dirt": ("normal", "dirt")}  # task -> (negative, positive)
EXTERNAL = {  # external set (named after its shift) -> task
    "snow": "defect",
    "after_snow": "defect",
    "rain": "defect",
    "after_rain": "defect",
    "h1": "dirt",
    "h2": "dirt",
}
# OOD set -> kind. Far: another domain (paper on a desk). Near: the car domain outside the classes,
# as deployment meets it: wheel close-ups, plates / lamps / mirrors, spoiled in-domain photos, the lot.
OOD = {"receipts": "far", "documents": "far", "wheels": "near", "car_details": "near", "unusable": "near",
       "street": "near"}
OOD_SPLITS = ("ood", "ood_val")  # reported / for choosing detectors and thresholds: the same sets, other images
MULTILABEL = "defect_and_dirt"  # panels with both marks
# reported / for choosing defaults under the shift: the same shift recipes, other images
EXT_SPLITS = ("ext", "ext_val")
OUTPUTS = ("dataset.yaml", "montage.png", *SPLITS, *EXT_SPLITS, *OOD_SPLITS, "multilabel")


def holdable() -> list[str]:
    """Classes that can be held out: those no task, multi-task binary head or negative, external or
    multi-label set names (the rest of the spec stays valid without them)."""
    spec = dataset_spec()
    used = {c for pair in spec["tasks"].values() for c in pair} | {spec["multitask"]["negative"]}
    used |= set(spec["multitask"]["binary"]) | {c for m in spec["multilabel"].values() for c in m["labels"]}
    return [c for c in CLASSES if c not in used]


def check_hold_out(name: str | None) -> None:
    if name is not None and name not in holdable():
        raise ValueError(f"--hold-out {name}: not a class that can be held out (tasks, multi-task heads and "
                         f"multi-label sets need the others); choose one of {', '.join(holdable())}")


def dataset_spec(hold_out: str | None = None, ext_val: bool = True) -> dict:
    """The stand-in's dataset.yaml, from the tables above. docs/dataset.example.yaml is this spec
    with comments (tests/test_generate.py checks that the two agree); data/spec.py parses it.
    `hold_out`: the spec without that class (see `generate`); `ext_val`: whether the external sets
    name their val splits (not when none were generated)."""
    return {
        "name": "sofar-embedded",
        "version": 1,
        "classes": {c: f for c, f in CLASSES.items() if c != hold_out},
        "splits": {s: s for s in SPLITS},
        "tasks": {t: list(pair) for t, pair in TASKS.items()},
        "multitask": {"negative": "normal", "binary": ["defect", "dirt", "bubble_wash"]},
        "external": {t: {f"ext_{s}": {"path": f"ext/{s}", "val": f"ext_val/{s}"} if ext_val else f"ext/{s}"
                         for s, task in EXTERNAL.items() if task == t} for t in TASKS},
        "ood": {s: {"path": f"ood/{s}", "val": f"ood_val/{s}", "kind": kind} for s, kind in OOD.items()},
        "multilabel": {MULTILABEL: {"path": f"multilabel/{MULTILABEL}", "labels": ["defect", "dirt"]}},
    }


NEAR_OOD = {"wheels": near_ood.wheel, "car_details": near_ood.detail, "street": near_ood.street}


def render(kind: str, shift: str | None, rng, S: int) -> np.ndarray:
    """One scene of `kind` (a class name, 'multilabel', or an OOD set) as a float RGB canvas."""
    if kind in ("normal", "defect", "dirt", "bubble_wash", "multilabel"):
        sc = weather.scene(rng, S, shift)
        if kind in ("defect", "multilabel"):
            marks.add_defect(sc, rng)
        if kind in ("dirt", "multilabel"):
            marks.add_dirt(sc, rng)
        if kind == "bubble_wash":
            marks.add_foam(sc, rng)
        weather.pre(sc, rng, shift)
        img = weather.post(sc, sc.render(), rng, shift)
        return sc.finish(img)
    if kind == "car_in_wash":
        return wash.car_in_wash(rng, S)
    if kind == "receipts":
        return documents.receipt(rng, S)
    if kind == "documents":
        return documents.document(rng, S)
    if kind == "unusable":  # any class's scene, spoiled
        return near_ood.spoil(render(list(CLASSES)[rng.integers(len(CLASSES))], None, rng, S), rng)
    if kind in NEAR_OOD:
        return NEAR_OOD[kind](rng, S)
    return getattr(interior, kind)(rng, S)


def _work(task) -> str:
    path, kind, shift, seed, size = task
    rng = np.random.default_rng(seed)
    img = render(kind, shift, rng, 2 * size)  # drawn at 2x; `finish` downsamples (anti-aliasing)
    Path(path).write_bytes(finish(img, size, rng))
    return path


def plan(out: Path, seed: int, size: int, train: int, val: int, test: int, ext: int, ext_val: int, ood: int,
         multilabel: int, hold_out: str | None = None, hold_out_dir: Path | None = None) -> list[tuple]:
    """Every file to write: (path, kind, shift, rng seed, size). The held-out class's split images
    go to `hold_out_dir` (same seeds, so the same bytes as in a full dataset)."""
    tasks = []
    names = list(CLASSES)
    for set_id, (split, n) in enumerate(zip(SPLITS, (train, val, test))):
        for cid, c in enumerate(names):
            root = hold_out_dir if c == hold_out else out
            for i in range(n):
                tasks.append((root / split / CLASSES[c] / f"{split}_{c}_{i:05d}.jpg", c, None, [seed, set_id, cid, i]))
    for j, (name, task) in enumerate(EXTERNAL.items()):
        # the val split draws from its own seed stream (40 + j): it never repeats an image of ext/,
        # and ext/'s images are the same with or without it
        for k, (folder, n) in enumerate(zip(EXT_SPLITS, (ext, ext_val))):
            for c in TASKS[task]:
                for i in range(n):
                    tasks.append((out / folder / name / CLASSES[c] / f"{folder}_{name}_{c}_{i:05d}.jpg", c, name,
                                  [seed, 10 + 30 * k + j, names.index(c), i]))
    for j, name in enumerate(OOD):
        for k, folder in enumerate(OOD_SPLITS):  # k in the seed: the two splits never share an image
            for i in range(ood):
                tasks.append((out / folder / name / f"{folder}_{name}_{i:05d}.jpg", name, None, [seed, 20 + j, k, i]))
    for i in range(multilabel):
        tasks.append((out / "multilabel" / MULTILABEL / f"multilabel_{MULTILABEL}_{i:05d}.jpg", "multilabel", None,
                      [seed, 30, 0, i]))
    return [(str(p), k, s, sd, size) for p, k, s, sd in tasks]


# Images per class per split (train/val/test), per class in each external set, per OOD set and split and in
# the multi-label set: sized so the quick CPU profile trains every paradigm in minutes. The test split is
# larger than the rest for what is measured on it: ECE, whose upward bias on a finite set is about 0.033
# at 40 per class (what a perfectly calibrated model measures) and about 0.017 at 160 (docs/evaluation.md).
# Per class in each external set's val split: half of `ext` (rounded up) unless given.
COUNTS = dict(train=100, val=20, test=160, ext=40, ood=50, multilabel=50)


def ext_val_count(ext: int, ext_val: int | None) -> int:
    return (ext + 1) // 2 if ext_val is None else ext_val


def generate(out, seed: int = 0, size: int = 96, train: int = COUNTS["train"], val: int = COUNTS["val"],
             test: int = COUNTS["test"], ext: int = COUNTS["ext"], ext_val: int | None = None,
             ood: int = COUNTS["ood"], multilabel: int = COUNTS["multilabel"], workers: int = 2, montage: bool = True,
             progress: bool = False, hold_out: str | None = None, hold_out_dir=None) -> dict:
    """Write the dataset to `out` and return its counts. Earlier generator outputs in `out` are
    replaced (only those: other files are left alone); the CLI refuses a non-empty folder.

    `ext_val`: images per class in each external set's val split (default: half of `ext`, rounded up).
    `hold_out` (a class of `holdable()`): `out` is the dataset without that class, and
    `hold_out_dir` (default `<out>_<class>`) holds that class alone as <split>/<class folder>/ —
    the task-data layout `python -m data.concat add` takes."""
    t0 = time.time()
    out = Path(out)
    check_hold_out(hold_out)
    hold_out_dir = None if hold_out is None else Path(hold_out_dir or f"{out}_{hold_out}")
    for root, names in ((out, OUTPUTS), (hold_out_dir, SPLITS)):
        for name in names if root is not None else ():
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    ext_val = ext_val_count(ext, ext_val)
    tasks = plan(out, seed, size, train, val, test, ext, ext_val, ood, multilabel, hold_out, hold_out_dir)
    for d in sorted({str(Path(t[0]).parent) for t in tasks}):
        Path(d).mkdir(parents=True, exist_ok=True)
    write_spec(dataset_spec(hold_out, ext_val=ext_val > 0), out)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(tasks), unit="img", desc="generating")
        except ImportError:
            pass
    if workers > 1 and len(tasks) > 64:  # below that, starting processes costs more than it saves
        # not "fork": a forked worker inherits the locks of the caller's threads (a model runtime's,
        # a progress bar's) and can hang on one; forkserver's workers start from a clean process
        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for _ in pool.imap_unordered(_work, tasks, chunksize=8):
                if bar is not None:
                    bar.update()
    else:
        for t in tasks:
            _work(t)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    if montage:
        from .montage import build  # imported late so `python -m data.generate.montage` runs cleanly
        build(out, out / "montage.png")
    counts = {
        "splits": {s: {c: n for c in CLASSES if c != hold_out} for s, n in zip(SPLITS, (train, val, test))},
        "held_out": None if hold_out is None else {"class": hold_out, "dir": str(hold_out_dir),
                                                   "splits": {s: n for s, n in zip(SPLITS, (train, val, test))}},
        "external": {name: {c: ext for c in TASKS[task]} for name, task in EXTERNAL.items()},
        "ext_val": {name: {c: ext_val for c in TASKS[task]} for name, task in EXTERNAL.items()},
        "ood": {name: ood for name in OOD},  # in each of OOD_SPLITS
        "multilabel": {MULTILABEL: multilabel},
        "total": len(tasks),
        "seconds": round(time.time() - t0, 2),
    }
    return counts
