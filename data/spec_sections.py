"""The sections of a dataset spec beyond its top level: classes, tasks, the multi-task heads,
external-validation, OOD and multi-label sets, each parsed and checked (data/spec.py reads the
file and assembles a Spec from them). Every problem is a SpecError that names the file, the key
and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from data.folders import SpecError

OOD_KEYS = ("path", "val", "kind")  # the long form of an OOD set; the short form is its path alone
EXTERNAL_KEYS = ("path", "val")  # the long form of an external set; the short form is its path alone
OOD_KINDS = ("near", "far")  # near: the domain's own scenes outside the classes; far: another domain

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # usable as a folder name and a shell word


@dataclass(frozen=True)
class MultiLabelSet:
    path: str
    labels: tuple[str, ...]


class Checks:
    """Validation of one spec file: `need` raises a SpecError that names the file, `known` checks
    that a class is defined under 'classes:'."""

    def __init__(self, file: Path, classes: dict[str, tuple[str, ...]] | None = None):
        self.file = file
        self.classes = classes or {}

    def need(self, cond: bool, msg: str) -> None:
        if not cond:
            raise SpecError(f"{self.file}: {msg}")

    def inside(self, path: str, where: str, allowed: bool) -> str:
        """A folder named by the spec: relative, and not climbing out of the root, unless allowed."""
        out = os.path.isabs(path) or os.path.normpath(path).split(os.sep)[0] == os.pardir
        self.need(allowed or not out, f"{where} '{path}' is outside the dataset root {self.file.parent}; move "
                                      f"the folder into the dataset, or add 'allow_outside_root: true' to the spec")
        return path

    def known(self, c, where: str) -> None:
        self.need(c in self.classes, f"{where} names class '{c}', which 'classes:' does not define "
                                     f"(defined: {', '.join(self.classes)}); fix the name or add the class")


def parse_classes(classes_raw, ck: Checks) -> dict[str, tuple[str, ...]]:
    """class name -> folder aliases; names and folders must stay distinct on a case-insensitive disk."""
    ck.need(isinstance(classes_raw, dict) and len(classes_raw) >= 2,
            "'classes:' must map at least two class names to their folder names")
    classes: dict[str, tuple[str, ...]] = {}
    lower: dict[str, str] = {}
    for c, folders in classes_raw.items():
        c = str(c)
        ck.need(c.lower() not in lower, f"class names '{lower.get(c.lower())}' and '{c}' differ only in case; "
                                        f"rename one (they would be merged on a case-insensitive disk)")
        lower[c.lower()] = c
        folders = [folders] if isinstance(folders, str) else folders
        ck.need(isinstance(folders, list) and folders and all(isinstance(f, str) for f in folders),
                f"class '{c}' must name a folder or a list of folders")
        for f in folders:  # matched against the entries of a split folder, so never a path
            ck.need(f not in ("", os.curdir, os.pardir) and "/" not in f and "\\" not in f,
                    f"class '{c}' names folder '{f}'; a class folder is one plain name inside each split "
                    f"(no '/', '.' or '..'); rename it")
        classes[c] = tuple(folders)
    seen: dict[str, str] = {}
    for c, folders in classes.items():
        for f in folders:
            ck.need(f.lower() not in seen, f"folder '{f}' is given to both '{seen.get(f.lower())}' and '{c}'; "
                                           f"a folder belongs to one class")
            seen[f.lower()] = c
    return classes


def parse_tasks(tasks_raw: dict, ck: Checks) -> dict[str, tuple[str, str]]:
    tasks = {}
    for t, pair in tasks_raw.items():
        ck.need(isinstance(pair, list) and len(pair) == 2 and pair[0] != pair[1],
                f"task '{t}' must be a list of two classes [negative, positive]")
        for c in pair:
            ck.known(c, f"task '{t}'")
        # a task names its run folder (task_<name>) and is a word in run/reproduce.sh's loop
        ck.need(NAME.match(str(t)) is not None, f"task name '{t}' is not usable as a folder name; rename it "
                                                f"(letters, digits, '_', '.', '-')")
        tasks[str(t)] = (pair[0], pair[1])
    return tasks


def parse_multitask(mt, ck: Checks) -> dict:
    """The multi-task heads: a sigmoid head per binary class, a softmax head over every other class."""
    ck.need(isinstance(mt, dict) and "negative" in mt and isinstance(mt.get("binary"), list),
            "'multitask:' needs 'negative: CLASS' and 'binary: [CLASS, ...]'")
    ck.known(mt["negative"], "multitask.negative")
    for c in mt["binary"]:
        ck.known(c, "multitask.binary")
    ck.need(mt["negative"] not in mt["binary"], "multitask.negative cannot also be a binary head")
    rest = [c for c in ck.classes if c != mt["negative"] and c not in mt["binary"]]
    return {"negative": mt["negative"], "binary": list(mt["binary"]), "softmax": rest}


def parse_set(entry, where: str, keys: tuple[str, ...], form: str, ck: Checks, outside: bool) -> dict:
    """One image set: its folder (the short form) or a mapping of `keys` with at least 'path:'.
    Returns the mapping; its path and val, when given, are checked to stay in the root."""
    if not isinstance(entry, dict):
        ck.need(isinstance(entry, (str, int, float)) and not isinstance(entry, bool),
                f"{where} must be a folder or a mapping {form}")
        entry = {"path": str(entry)}
    unknown = sorted(map(str, set(entry) - set(keys)))
    ck.need(not unknown, f"{where}: unknown key(s) {unknown}; the set takes {', '.join(keys)}")
    ck.need(isinstance(entry.get("path"), str) and entry["path"] != "",
            f"{where} needs 'path:', the folder of the reported images")
    ck.inside(entry["path"], where, outside)
    if "val" in entry:
        ck.need(isinstance(entry["val"], str) and entry["val"] != "",
                f"{where}.val must be a folder (of other images of the set, for choosing)")
        ck.inside(entry["val"], f"{where}.val", outside)
    return entry


def check_val_apart(reported: dict[str, str], val: dict[str, str], ck: Checks) -> None:
    """A val folder (by its key, e.g. 'ood.w') may be no reported folder: what is chosen on it
    would otherwise be reported on its own images."""
    folders = {os.path.normpath(p): n for n, p in reported.items()}
    for n, p in val.items():
        ck.need(os.path.normpath(p) not in folders,
                f"{n}.val '{p}' is also the reported folder of {folders.get(os.path.normpath(p))}; "
                f"give the val split its own folder (nothing may be chosen on the reported images)")


def parse_external(suites, tasks: dict, ck: Checks, outside: bool) -> tuple[dict, dict]:
    """(reported folders, val folders) of the external-validation sets, each {task: {set: folder}}.
    A set is a folder with the task's class folders, or {path, val}: `val` holds other images under
    the same shift, where defaults are chosen without looking at the reported set."""
    ck.need(isinstance(suites, dict), "'external:' must map task names to their sets")
    external, val = {}, {}
    for t, sets in suites.items():
        ck.need(t in tasks, f"external suite '{t}' is no task under 'tasks:' ({', '.join(tasks) or 'none'})")
        ck.need(isinstance(sets, dict), f"external.{t} must map set names to folders or to {{path: ..., val: ...}}")
        t = str(t)
        external[t] = {}
        for n, entry in sets.items():
            entry = parse_set(entry, f"external.{t}.{n}", EXTERNAL_KEYS, "{path: ..., val: ...}", ck, outside)
            external[t][str(n)] = entry["path"]
            if "val" in entry:
                val.setdefault(t, {})[str(n)] = entry["val"]
    check_val_apart({f"external.{t}.{n}": p for t, s in external.items() for n, p in s.items()},
                    {f"external.{t}.{n}": p for t, s in val.items() for n, p in s.items()}, ck)
    return external, val


def parse_ood(sets, ck: Checks, outside: bool) -> tuple[dict[str, str], dict[str, str], dict[str, str | None]]:
    """(reported folders, val folders, kinds) of the OOD sets. A set is a folder (the short form) or
    {path, val, kind}: `val` is the split that chooses detectors and thresholds."""
    ck.need(isinstance(sets, dict), "'ood:' must map set names to folders or to {path: ..., val: ..., kind: ...}")
    ood, val, kind = {}, {}, {}
    for n, entry in sets.items():
        n = str(n)
        entry = parse_set(entry, f"ood.{n}", OOD_KEYS, "{path: ..., val: ..., kind: near|far}", ck, outside)
        ood[n] = entry["path"]
        if "val" in entry:
            val[n] = entry["val"]
        k = entry.get("kind")
        ck.need(k is None or k in OOD_KINDS,
                f"ood.{n}.kind is '{k}'; use one of {', '.join(OOD_KINDS)} (or leave it out)")
        kind[n] = k
    check_val_apart({f"ood.{n}": p for n, p in ood.items()}, {f"ood.{n}": p for n, p in val.items()}, ck)
    return ood, val, kind


def parse_multilabel(sets: dict, ck: Checks) -> dict[str, MultiLabelSet]:
    multilabel = {}
    for n, m in sets.items():
        ck.need(isinstance(m, dict) and "path" in m and isinstance(m.get("labels"), list) and len(m["labels"]) >= 2,
                f"multilabel set '{n}' needs 'path:' and 'labels: [CLASS, CLASS, ...]'")
        for c in m["labels"]:
            ck.known(c, f"multilabel set '{n}'")
        multilabel[str(n)] = MultiLabelSet(str(m["path"]), tuple(m["labels"]))
    return multilabel
