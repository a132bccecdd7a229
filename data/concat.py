"""Concatenate task datasets (Normal v Dirt, Normal v Defect, ...) into one dataset with one label space.

The first step of the efficient ML system: `python -m data.concat --source dirt=A --source defect=B
--out DIR` writes DIR/<split>/<class>/, DIR/dataset.yaml and DIR/concat_report.json (class counts,
duplicates found by content hash, train/test leaks). Duplicates with the same label: one copy is kept
(in the evaluation split when they straddle splits, so test sets stay intact and train loses the leak).
Duplicates with different labels are multi-label candidates: removed from the single-label splits (a
single-label classifier cannot be right on both) and moved to DIR/multilabel/<a>_and_<b>/.

`python -m data.concat add --dataset DIR --task-data NEW --out OUT` adds one task (one new class) to a
concatenated dataset with the same report (data/concat_add.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from data.folders import SPEC_FILE, SpecError, list_images
from data.images import ImageError, content_hash, load_rgb
from data.spec import NAME, load_spec, parse_spec, write_spec

LINKS = ("copy", "hardlink", "symlink")


class ConcatError(ValueError):
    """Bad input to concat; the message names the file, folder or argument and the fix."""


class Item(NamedTuple):
    source: str
    split: str  # a split name, or "external"/"ext_val"/"ood"/"multilabel" for the extra sets of a spec source
    cls: str | None
    path: Path


@dataclass
class Source:
    name: str
    root: Path
    items: list[Item]  # single-label split images, classes already merged (aliases applied)
    raw_classes: set[str]  # class names before aliases (to catch an --alias that matches nothing)
    spec_file: Path | None = None
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)
    extras: list[tuple[str, tuple, list[Item]]] = field(default_factory=list)  # (kind, key, items)

    @property
    def where(self) -> Path:
        return self.spec_file or self.root

    @property
    def classes(self) -> list[str]:
        return list(dict.fromkeys(i.cls for i in self.items))


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_source(name: str, root: Path, aliases: dict[str, str]) -> Source:
    """Read one task dataset: a folder with a dataset.yaml, or a plain <split>/<class>/ image tree."""
    root = Path(root)
    if not root.is_dir():
        raise ConcatError(f"{root}: source '{name}' not found; pass an existing dataset folder")
    rename = lambda c: aliases.get(c, c)  # noqa: E731
    if (root / SPEC_FILE).is_file():
        spec = load_spec(root)
        items = [Item(name, s, rename(c), p) for s in spec.splits for p, c in spec.split_samples(s)]
        src = Source(name, root, items, set(spec.classes), spec.file,
                     {t: (rename(n), rename(p)) for t, (n, p) in spec.tasks.items()})
        for task, sets in spec.external.items():
            for set_name, folder in sets.items():  # the set, then its val split when it has one
                for kind, f in (("external", folder), ("ext_val", spec.external_val.get(task, {}).get(set_name))):
                    if f is not None:
                        found = spec.samples(f, list(spec.tasks[task]))
                        src.extras.append((kind, (task, set_name),
                                           [Item(name, kind, rename(c), p) for p, c in found]))
        for set_name, folder in spec.ood.items():
            src.extras.append(("ood", (set_name,), [Item(name, "ood", None, p) for p in spec.flat_images(folder)]))
        for m in spec.multilabel.values():
            labels = tuple(sorted({rename(c) for c in m.labels}))
            src.extras.append(("multilabel", labels,
                               [Item(name, "multilabel", None, p) for p in spec.flat_images(m.path)]))
        return src
    subs = subdirs(root)
    if not subs:
        raise ConcatError(f"{root}: source '{name}' has no split or class folders; expected "
                          f"{root}/<split>/<class>/*.jpg, {root}/<class>/*.jpg or a {SPEC_FILE}")
    # class folders directly under the root (they hold images) -> one split 'train'
    layout = {"train": root} if any(list_images(d) for d in subs) else {d.name.lower(): d for d in subs}
    items, raw = [], set()
    for split, folder in layout.items():
        if list_images(folder):
            raise ConcatError(f"{folder}: images outside any class folder; move them into a class folder")
        classes = subdirs(folder)
        if not classes:
            raise ConcatError(f"{folder}: split '{split}' of source '{name}' has no class folders; "
                              f"expected {folder}/<class>/*.jpg")
        for d in classes:
            images = list_images(d)
            if not images:
                raise ConcatError(f"{d}: empty class folder (no images); add images or remove the folder")
            c = re.sub(r"^\d+_", "", d.name).lower()  # 1_DEFECT -> defect
            raw.add(c)
            items += [Item(name, split, rename(c), p) for p in images]
    return Source(name, root, items, raw)


def check_images(items: list[Item], skip_bad: bool) -> tuple[dict[Path, str], list[str]]:
    """Decode every image with load_rgb and hash it; all bad files are collected before failing."""
    paths = list(dict.fromkeys(i.path for i in items))

    def one(p: Path):
        try:
            load_rgb(p)
            return content_hash(p), None
        except ImageError as e:
            return None, str(e)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images",
                            unit="img", disable=None))
    bad = [e for _, e in results if e]
    if bad and not skip_bad:
        raise ConcatError(f"{len(bad)} unreadable image(s): {' | '.join(bad)} -- fix or remove them, "
                          f"or pass --skip-bad to leave them out (they are then listed in the report)")
    return {p: h for p, (h, _) in zip(paths, results) if h}, bad


def find_duplicates(items: list[Item], hashes: dict[Path, str]) -> dict[str, list[int]]:
    """Content hash -> indices into items, for every hash that occurs more than once."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        if item.path in hashes:
            groups[hashes[item.path]].append(k)
    return {h: ks for h, ks in groups.items() if len(ks) > 1}


def keep_rank(split: str) -> int:
    """Which copy of an agreeing duplicate is kept: test first, then val, other splits, train last."""
    return {"test": 0, "val": 1, "train": 3}.get(split, 2)


def merge_tasks(sources: list[Source]) -> dict[str, tuple[str, str]]:
    """Spec sources bring their tasks; a two-class source without any becomes <source>: [neg, pos],
    the negative being a negative of a spec task, else the class most shared, else the first by name."""
    tasks: dict[str, tuple[str, str]] = {}
    for s in sources:
        for t, pair in s.tasks.items():
            if tasks.setdefault(t, pair) != pair:
                raise ConcatError(f"{s.where}: task '{t}' is {list(pair)} here but {list(tasks[t])} in another "
                                  f"source; rename the task in one of them")
    negatives, owners = {n for n, _ in tasks.values()}, Counter(c for s in sources for c in s.classes)
    for s in sources:
        if s.tasks or len(s.classes) != 2:
            continue
        pair = tuple(sorted(s.classes, key=lambda c: (c not in negatives, -owners[c], c)))
        if pair in tasks.values():
            continue  # the same task is already defined by a spec source
        if s.name in tasks:
            raise ConcatError(f"--source {s.name}: task '{s.name}' is already defined by a spec source as "
                              f"{list(tasks[s.name])}; name this source differently")
        tasks[s.name] = pair
    return tasks


def check_classes(sources: list[Source], aliases: dict[str, str]) -> list[str]:
    raw = set().union(*(s.raw_classes for s in sources))
    for old, new in aliases.items():
        if old not in raw:
            raise ConcatError(f"--alias {old}={new}: no source has a class '{old}' (classes: "
                              f"{', '.join(sorted(raw))}); fix the name")
    seen: dict[str, tuple[str, Source]] = {}
    for s in sources:
        for c in s.classes:
            if not NAME.match(c):
                raise ConcatError(f"{s.where}: class '{c}' is not usable as a folder name; "
                                  f"rename it with --alias '{c}=NEW_NAME'")
            other, o = seen.setdefault(c.lower(), (c, s))
            if other != c:
                fix = f"{c}={other}" if c != c.lower() else f"{other}={c}"
                raise ConcatError(f"{s.where}: class '{c}' (source '{s.name}') and '{other}' (source '{o.name}', "
                                  f"{o.where}) differ only in case; merge them with --alias {fix}")
    return list(dict.fromkeys(c for s in sources for c in s.classes))


def place(src: Path, folder: Path, name: str, link: str, used: set[Path]) -> Path:
    dest, n = folder / name, 2
    while dest in used:  # two folders of one source merged into one class may share file names
        dest, n = folder / f"{Path(name).stem}__{n}{Path(name).suffix}", n + 1
    used.add(dest)
    folder.mkdir(parents=True, exist_ok=True)
    if link == "copy":
        shutil.copy2(src, dest)
    elif link == "hardlink":
        os.link(src, dest)
    else:
        os.symlink(src.resolve(), dest)
    return dest


def concat(sources: dict[str, Path], out: Path, aliases: dict[str, str], link: str = "copy",
           skip_bad: bool = False, name: str | None = None, force: bool = False) -> dict:
    """Concatenate `sources` (name -> dataset folder) into `out`; returns the report (also in out)."""
    out = Path(out)
    check_arguments(sources, out, link, force)
    srcs = [read_source(n, Path(p), aliases) for n, p in sources.items()]
    classes = check_classes(srcs, aliases)
    tasks = merge_tasks(srcs)
    splits = list(dict.fromkeys(i.split for s in srcs for i in s.items))
    if "train" not in splits:
        raise ConcatError(f"no source has a 'train' split (splits: {', '.join(splits)}); "
                          f"name one split folder 'train'")
    splits = ["train"] + [s for s in splits if s != "train"]
    items = [i for s in srcs for i in s.items]
    extras = [(s.name, kind, key, its) for s in srcs for kind, key, its in s.extras]
    hashes, bad = check_images(items + [i for *_, its in extras for i in its], skip_bad)
    removed, moved, dup_report = resolve_duplicates(items, hashes, {n for n, _ in tasks.values()})
    for _, kind, key, its in extras:
        if kind == "multilabel":
            moved[key] += its
    kept = [i for k, i in enumerate(items) if k not in removed and i.path in hashes]
    spec = build_spec(name or out.name, classes, splits, tasks, extras, moved, sources)
    if link == "symlink":  # its images are links back into the sources, outside the new root by design
        spec["allow_outside_root"] = True
    parse_spec(spec, out)  # a spec error must come before anything is written

    with building(out) as tmp:
        ml_report = place_all(tmp, kept, moved, extras, hashes, link)
        write_spec(spec, tmp)
        count = lambda its: {s: dict(Counter(i.cls for i in its if i.split == s)) for s in splits}  # noqa: E731
        after = count(kept)
        report = {
            "out": str(out), "name": spec["name"], "link": link, "aliases": aliases,
            "sources": {s.name: {"path": str(s.root), "spec": s.spec_file is not None, "classes": s.classes}
                        for s in srcs},
            "classes": classes, "splits": splits, "tasks": spec["tasks"],
            "counts_before": {s.name: count(s.items) for s in srcs}, "counts_after": after,
            "duplicates": dup_report, "multilabel": ml_report, "skipped_bad": bad,
            "missing": {s: [c for c in classes if not after[s].get(c)] for s in splits},  # loaders refuse these
        }
        (tmp / "concat_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@contextlib.contextmanager
def building(out: Path):
    """A folder built beside `out` that replaces it only once complete; removed on any error."""
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_arguments(sources: dict[str, Path], out: Path, link: str, force: bool) -> None:
    if link not in LINKS:
        raise ConcatError(f"--link {link}: unknown; use one of {', '.join(LINKS)}")
    if not sources:
        raise ConcatError("no sources; pass --source NAME=PATH at least once")
    for n, root in sources.items():
        r, o = Path(root).resolve(), out.resolve()
        if o == r or r in o.parents or o in r.parents:
            raise ConcatError(f"{out}: overlaps source '{n}' ({root}); choose an --out outside every source")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        raise ConcatError(f"{out}: exists and is not an empty folder; pass --force to replace it "
                          f"or choose another --out")


def resolve_duplicates(items: list[Item], hashes: dict[Path, str], negatives: set[str]):
    """Agreeing duplicates keep one copy; disagreeing ones all move to a multi-label set.
    Returns (indices of items removed, labels -> items moved, one report record per group)."""
    removed, moved, dup_report = set(), defaultdict(list), []
    for h, ks in find_duplicates(items, hashes).items():
        group = [items[k] for k in ks]
        labels, dup_splits = sorted({i.cls for i in group}), sorted({i.split for i in group})
        rec = {"hash": h, "labels": labels, "labels_agree": len(labels) == 1, "leak": len(dup_splits) > 1,
               "splits": dup_splits, "members": [{"source": i.source, "split": i.split, "class": i.cls,
                                                  "path": str(i.path)} for i in group]}
        if len(labels) == 1:
            keep = min(ks, key=lambda k: keep_rank(items[k].split))
            removed.update(k for k in ks if k != keep)
            rec["action"] = (f"kept one copy (source '{items[keep].source}', {items[keep].split}), "
                             f"dropped {len(ks) - 1}")
        else:
            removed.update(ks)
            moved[tuple(labels)].append(group[0])
            rec["action"] = f"moved to multilabel/{'_and_'.join(labels)}/ (removed from the single-label splits)"
            if negatives & set(labels):
                rec["note"] = "one label is a task negative: more likely a labelling error than two labels"
        dup_report.append(rec)
    return removed, moved, dup_report


def build_spec(name: str, classes: list[str], splits: list[str], tasks: dict, extras: list, moved: dict,
               sources: dict[str, Path]) -> dict:
    """The written dataset.yaml: the sources' external (with their val splits) and OOD sets keep their
    folders under sources/<name>/."""
    spec = {"name": name, "version": 1, "classes": {c: c for c in classes},
            "splits": {s: s for s in splits}, "tasks": {t: list(p) for t, p in tasks.items()}}
    for src, kind, key, _ in extras:
        if kind == "multilabel":
            continue
        if kind == "ext_val":  # comes right after its set's "external" entry
            sets = spec["external"][key[0]]
            sets[key[1]] = {"path": sets[key[1]], "val": f"sources/{src}/{kind}/{'/'.join(key)}"}
            continue
        sets = spec.setdefault(kind, {})  # ood: {set: folder}; external: {task: {set: folder}}
        if kind == "external":
            sets = sets.setdefault(key[0], {})
        if key[-1] in sets:
            raise ConcatError(f"{sources[src]}: {kind} set '{key[-1]}' also comes from another source; rename one")
        sets[key[-1]] = f"sources/{src}/{kind}/{'/'.join(key)}"
    if moved:
        spec["multilabel"] = {"_and_".join(k): {"path": f"multilabel/{'_and_'.join(k)}", "labels": list(k)}
                              for k in moved}
    return spec


def place_all(tmp: Path, kept: list[Item], moved: dict, extras: list, hashes: dict[Path, str], link: str) -> dict:
    """Place every image in the new dataset folder; returns the multi-label part of the report."""
    used: set[Path] = set()
    for i in kept:
        place(i.path, tmp / i.split / i.cls, f"{i.source}__{i.path.name}", link, used)
    ml_report = {}
    for labels, its in moved.items():
        n = "_and_".join(labels)
        files = [place(i.path, tmp / "multilabel" / n, f"{i.source}__{i.path.name}", link, used)
                 for i in its if i.path in hashes]
        ml_report[n] = {"labels": list(labels), "images": [str(f.relative_to(tmp)) for f in files]}
    for src, kind, key, its in extras:
        if kind != "multilabel":
            for i in its:
                if i.path in hashes:
                    place(i.path, tmp / "sources" / src / kind / "/".join(key) / (i.cls or ""),
                          i.path.name, link, used)
    return ml_report


def format_report(r: dict) -> str:
    names = list(r["sources"])
    w, cw = max(8, *(len(n) + 2 for n in names)), max(len(c) for c in r["classes"]) + 2
    a = r.get("added")
    head = (f"added class {a['class']} and task {a['task']}: {r['tasks'][a['task']]} to {a['dataset']}, into "
            if a else f"concatenated {', '.join(names)} into ")
    lines = [f"{head}{r['out']} ({r['link']}); classes: {', '.join(r['classes'])}; tasks: {r['tasks']}"]
    for s in r["splits"]:
        lines.append(f"\n[{s}]".ljust(cw + 1) + "".join(n.rjust(w) for n in names) + "merged".rjust(w))
        for c in r["classes"]:
            before = [r["counts_before"][n][s].get(c) for n in names]
            lines.append(c.ljust(cw) + "".join(str(b if b else "-").rjust(w) for b in before)
                         + str(r["counts_after"][s].get(c, 0)).rjust(w))
        if r["missing"][s]:
            lines.append(f"  note: no {', '.join(r['missing'][s])} images in {s}")
    dups = r["duplicates"]
    lines.append(f"\nduplicates (same content): {len(dups)} group(s), "
                 f"{sum(not d['labels_agree'] for d in dups)} with different labels, "
                 f"{sum(d['leak'] for d in dups)} leak(s) across splits")
    for d in dups:
        where = ", ".join(f"{m['source']}/{m['split']}/{m['class']}" for m in d["members"])
        lines.append(f"  {'LEAK ' * d['leak']}{where}: {d['action']}" + (f" [{d['note']}]" if "note" in d else ""))
    for n, m in r["multilabel"].items():
        lines.append(f"multi-label set multilabel/{n}: {len(m['images'])} image(s) labelled {' + '.join(m['labels'])}")
    for b in r["skipped_bad"]:
        lines.append(f"skipped bad image: {b}")
    file = f"add_report_{a['task']}.json" if a else "concat_report.json"
    return "\n".join(lines + [f"report: {r['out']}/{file}"])


def parse_pairs(values: list[str], flag: str, form: str, key_re: re.Pattern | None, value_re: re.Pattern | None):
    pairs: dict[str, str] = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val or (key_re and not key_re.match(key)) or (value_re and not value_re.match(val)):
            raise ConcatError(f"{flag} '{v}': expected {form} (names: letters, digits, '_', '.', '-')")
        if key in pairs:
            raise ConcatError(f"{flag} '{v}': '{key}' is given twice; give it once")
        pairs[key] = val
    return pairs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["add"]:  # python -m data.concat add ...: one more task (data/concat_add.py)
        from data import concat_add
        return report_or_error(lambda: concat_add.run(argv[1:]))
    ap = argparse.ArgumentParser(prog="python -m data.concat", description=__doc__.split("\n\n")[0],
                                 epilog="python -m data.concat add --help: add one task to a concatenated dataset")
    ap.add_argument("--source", action="append", required=True, metavar="NAME=PATH",
                    help="a task dataset (folder with dataset.yaml, or <split>/<class>/ images); repeatable")
    ap.add_argument("--alias", action="append", default=[], metavar="OLD=NEW",
                    help="merge class OLD into NEW (after folder names are lower-cased, '1_' stripped)")
    ap.add_argument("--out", required=True, type=Path, help="output dataset folder")
    ap.add_argument("--link", choices=LINKS, default="copy", help="how files are placed (default: copy)")
    ap.add_argument("--name", help="dataset name in the written spec (default: the --out folder name)")
    ap.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (listed in the report)")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)

    def run():
        sources = parse_pairs(args.source, "--source", "NAME=PATH", NAME, None)
        aliases = parse_pairs(args.alias, "--alias", "OLD=NEW", None, NAME)
        return concat({n: Path(p) for n, p in sources.items()}, args.out, aliases, args.link,
                      args.skip_bad, args.name, args.force)
    return report_or_error(run)


def report_or_error(run) -> int:
    """Print the report of `run()`, or its one-line error (exit 2)."""
    try:
        report = run()
    except (ConcatError, SpecError, ImageError, OSError) as e:
        print("error: " + str(e).replace("\n", " "), file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":
    from data import concat as _module  # one ConcatError class, also for data/concat_add.py
    sys.exit(_module.main())
