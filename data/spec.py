"""The dataset spec: `dataset.yaml` at the root of a dataset folder.

Every command takes a dataset as a folder and reads classes, splits, tasks, the multi-task head
layout, external-validation suites, OOD sets and multi-label sets from this one file, so no code
assumes SOFAR's class names, their number or the number of tasks. `docs/dataset.example.yaml`
is the complete format.

A dataset cannot reach out of its folder: a path in the spec that leaves the root, or a symbolic
link that leads out of it, is refused unless the spec says `allow_outside_root: true`; a link loop
is always refused; a FIFO, socket or folder with an image's name is skipped and named on stderr,
never opened. The YAML itself may not use aliases (nested ones expand without bound).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.folders import SPEC_FILE, SpecError, follow, list_images
from data.spec_sections import (EXTERNAL_KEYS, NAME, OOD_KEYS, Checks, MultiLabelSet, parse_classes,  # noqa: F401
                                parse_external, parse_multilabel, parse_multitask, parse_ood, parse_tasks)

KEYS = ("name", "version", "classes", "splits", "tasks", "multitask", "external", "ood", "multilabel")  # top level
# accepted too, but no part of the generated example (the embedded dataset never needs it): docs/data.md says when
OPT_IN_KEYS = ("allow_outside_root",)
MAX_SPEC_BYTES = 1 << 20  # a spec is a few kB; a bigger file is the wrong file, and is not read
# What reads each standard split: `python -m data.spec` refuses a spec without the ones a step needs
# (the loader accepts any splits with 'train', so a spec that only serves a model still loads).
SPLIT_USES = {"train": "train.py trains on", "val": "train.py chooses the best epoch (best.pt) on",
              "test": "evaluate.py reports on"}
TRAINING_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Spec:
    root: Path
    name: str
    classes: dict[str, tuple[str, ...]]  # class name -> its folder aliases
    splits: dict[str, str]
    tasks: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (negative, positive)
    multitask: dict | None = None  # {"negative": c, "binary": [c...], "softmax": [c...]}
    external: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> set -> reported folder
    # task -> set -> folder of other images under the same shift, for choosing defaults (only sets with one)
    external_val: dict[str, dict[str, str]] = field(default_factory=dict)
    ood: dict[str, str] = field(default_factory=dict)  # set -> reported folder (never used to choose anything)
    ood_val: dict[str, str] = field(default_factory=dict)  # set -> folder for choosing detectors and thresholds
    ood_kind: dict[str, str | None] = field(default_factory=dict)  # set -> "near", "far" or None (not said)
    multilabel: dict[str, MultiLabelSet] = field(default_factory=dict)
    allow_outside_root: bool = False  # paths and symbolic links may lead out of `root`

    @property
    def file(self) -> Path:
        return self.root / SPEC_FILE

    @property
    def bound(self) -> Path:
        """The folder that the spec's paths and links must stay in."""
        return Path("/") if self.allow_outside_root else self.root

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def as_dict(self) -> dict:
        """The spec as plain data, for checkpoints and for writing a new dataset.yaml."""
        d = {"name": self.name, "version": 1,
             "classes": {c: (list(a) if len(a) > 1 else a[0]) for c, a in self.classes.items()},
             "splits": dict(self.splits),
             "tasks": {t: list(p) for t, p in self.tasks.items()}}
        if self.multitask:
            d["multitask"] = {"negative": self.multitask["negative"],
                              "binary": list(self.multitask["binary"])}
        if self.external:
            d["external"] = {t: {n: self._external_entry(t, n) for n in s} for t, s in self.external.items()}
        if self.ood:
            d["ood"] = {n: self._ood_entry(n) for n in self.ood}
        if self.multilabel:
            d["multilabel"] = {n: {"path": m.path, "labels": list(m.labels)}
                               for n, m in self.multilabel.items()}
        if self.allow_outside_root:
            d["allow_outside_root"] = True
        return d

    def _external_entry(self, task: str, name: str) -> str | dict:
        """An external set as the spec writes it: the short form when it has no val split."""
        val = self.external_val.get(task, {}).get(name)
        return self.external[task][name] if val is None else {"path": self.external[task][name], "val": val}

    def _ood_entry(self, name: str) -> str | dict:
        """An OOD set as the spec writes it: the short form when it has neither a val split nor a kind."""
        if name not in self.ood_val and self.ood_kind.get(name) is None:
            return self.ood[name]
        entry = {"path": self.ood[name]}
        if name in self.ood_val:
            entry["val"] = self.ood_val[name]
        if self.ood_kind.get(name) is not None:
            entry["kind"] = self.ood_kind[name]
        return entry

    def folder_to_class(self) -> dict[str, str]:
        return {alias: c for c, aliases in self.classes.items() for alias in aliases}

    def split_dir(self, split: str) -> Path:
        if split not in self.splits:
            raise SpecError(f"{self.file}: no split '{split}'; the spec defines "
                            f"{sorted(self.splits)} (add it under 'splits:')")
        return self.root / self.splits[split]

    def samples(self, folder: str | Path, classes: list[str] | None = None) -> list[tuple[Path, str]]:
        """(image path, class name) for every image of `classes` under a folder of class folders.

        Every listed class must have a non-empty folder; a folder that is no class of the spec is an
        error (a typo would otherwise drop a whole class silently). Links are followed as in `scan_images`.
        """
        base = self.folder(folder)
        wanted = self.class_names if classes is None else list(classes)
        for c in wanted:
            self.check_class(c, "a sample request")
        known = self.folder_to_class()
        found: dict[str, list[Path]] = {c: [] for c in wanted}
        for sub in sorted(base.iterdir()):
            real = follow(sub, self.bound) if sub.is_symlink() else sub
            if real is None or not real.is_dir():
                continue
            if sub.name not in known:
                raise SpecError(f"{sub}: folder is no class of {self.file} (classes and their folders: "
                                f"{ {c: list(a) for c, a in self.classes.items()} }); "
                                f"add it under 'classes:' or move it out")
            if known[sub.name] in found:
                found[known[sub.name]] += list_images(sub, self.bound)
        out = []
        for c in wanted:
            if not found[c]:
                raise SpecError(f"{base}: class '{c}' has no images (expected a non-empty folder "
                                f"named {' or '.join(self.classes[c])}); add images or drop the class")
            out += [(p, c) for p in sorted(found[c])]
        return out

    def split_samples(self, split: str, classes: list[str] | None = None) -> list[tuple[Path, str]]:
        return self.samples(self.split_dir(split), classes)

    def flat_images(self, folder: str) -> list[Path]:
        base = self.folder(folder)
        images = list_images(base, self.bound)
        if not images:
            raise SpecError(f"{base}: no images in this set named by {self.file}; add images or remove the set")
        return images

    def folder(self, folder: str | Path) -> Path:
        """A folder named by the spec, relative to the root; SpecError if it is missing or leads out."""
        base = Path(folder) if Path(folder).is_absolute() else self.root / folder
        real = follow(base, self.bound)
        if real is None or not real.is_dir():
            raise SpecError(f"{base}: folder not found (named by {self.file}); create it or fix the path")
        return base

    def check_class(self, name: str, where: str) -> None:
        Checks(self.file, self.classes).known(name, where)


def load_spec(root: str | Path) -> Spec:
    """Read and validate `root/dataset.yaml`; every problem is a SpecError that names the fix."""
    root = Path(root).absolute()  # folders named in the spec are relative to it
    file = root / SPEC_FILE
    if not root.is_dir():
        raise SpecError(f"{root}: dataset folder not found; pass a folder that holds {SPEC_FILE} "
                        f"(or run 'python -m data.generate --out {root}' for the embedded dataset)")
    if not file.is_file():
        raise SpecError(f"{file}: missing; every dataset folder needs a {SPEC_FILE} "
                        f"(see docs/dataset.example.yaml)")
    if (size := file.stat().st_size) > MAX_SPEC_BYTES:
        raise SpecError(f"{file}: {size:,} bytes; a spec is a few kB (limit {MAX_SPEC_BYTES:,}), "
                        f"so this is not one; replace it")
    try:
        raw = yaml.load(file.read_text(), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except _AliasFound as e:
        raise SpecError(f"{file}: line {e.line}: alias *{e.anchor} is not allowed in a spec (nested aliases "
                        f"expand without bound); write the value out") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{file}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    except RecursionError:
        raise SpecError(f"{file}: nested too deeply to be a spec; fix the structure") from None
    return parse_spec(raw, root)


class _AliasFound(yaml.YAMLError):
    def __init__(self, anchor: str, line: int):
        super().__init__(anchor)
        self.anchor, self.line = anchor, line


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses aliases: a spec never needs one, and nine nested ones make a
    'billion laughs' document that expands to 9**9 strings once anything walks it."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    """yaml.safe_dump that writes a value used twice out twice, as load_spec refuses aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


def parse_spec(raw, root: Path) -> Spec:
    """Validate a spec given as plain data (a parsed dataset.yaml of the folder `root`)."""
    ck = Checks(root / SPEC_FILE)
    ck.need(isinstance(raw, dict), "must be a mapping with at least 'classes:' and 'splits:'")
    unknown = set(raw) - set(KEYS) - set(OPT_IN_KEYS)
    ck.need(not unknown, f"unknown key(s) {sorted(unknown)}; see docs/dataset.example.yaml")
    outside = raw.get("allow_outside_root", False)
    ck.need(isinstance(outside, bool), "'allow_outside_root:' must be true or false")
    ck.classes = parse_classes(raw.get("classes"), ck)
    splits = raw.get("splits")
    ck.need(isinstance(splits, dict) and "train" in splits,
            "'splits:' must map split names (at least 'train', best also 'val' and 'test') to folders")
    splits = {str(k): ck.inside(str(v), f"splits.{k}", outside) for k, v in splits.items()}
    tasks = parse_tasks(raw.get("tasks") or {}, ck)
    multitask = parse_multitask(raw["multitask"], ck) if raw.get("multitask") else None
    external, external_val = parse_external(raw.get("external") or {}, tasks, ck, outside)
    ood, ood_val, ood_kind = parse_ood(raw.get("ood") or {}, ck, outside)
    multilabel = parse_multilabel(raw.get("multilabel") or {}, ck)
    for n, m in multilabel.items():
        ck.inside(m.path, f"multilabel.{n}", outside)
    return Spec(root=root, name=str(raw.get("name", root.name)), classes=ck.classes, splits=splits, tasks=tasks,
                multitask=multitask, external=external, external_val=external_val, ood=ood, ood_val=ood_val,
                ood_kind=ood_kind, multilabel=multilabel, allow_outside_root=outside)


def write_spec(spec_dict: dict, root: str | Path) -> Path:
    """Write a spec (plain data, as Spec.as_dict gives) and check that it parses."""
    root = Path(root)
    parse_spec(spec_dict, root)
    path = root / SPEC_FILE
    path.write_text(yaml.dump(spec_dict, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True))
    return path


def require_splits(spec: Spec, splits) -> None:
    """SpecError naming the first of `splits` that the spec lacks, what needs it and what to add."""
    for split in splits:
        if split not in spec.splits:
            use = f", which {SPLIT_USES[split]} it" if split in SPLIT_USES else ""
            raise SpecError(f"{spec.file}: no '{split}' split{use}; add it under 'splits:' (e.g. "
                            f"'{split}: {split}', a folder of class folders like the other splits)")


def main(argv: list[str] | None = None) -> int:
    """`python -m data.spec DIR [--tasks | --multitask]`: run/reproduce.sh's check before training."""
    ap = argparse.ArgumentParser(prog="python -m data.spec",
                                 description="Check a dataset folder: its spec, the splits training needs, and "
                                             "an image in every class folder of every split and of every "
                                             "external set (and its val split).")
    ap.add_argument("data", help="dataset folder holding dataset.yaml")
    ap.add_argument("--splits", default=",".join(TRAINING_SPLITS),
                    help="splits the spec must have, comma-separated (default: train,val, what train.py needs; "
                         "run/reproduce.sh asks for test too, which evaluate.py reports on)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--tasks", action="store_true", help="print the task names, one a line")
    what.add_argument("--multitask", action="store_true", help="print yes if the spec has a 'multitask:' section, else no")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.data)
        require_splits(spec, [s for s in args.splits.split(",") if s])
        for split in spec.splits:
            spec.split_samples(split)
        for task, suite in spec.external.items():  # each external set and its val split: the task's two classes
            for name, folder in suite.items():
                for f in (folder, spec.external_val.get(task, {}).get(name)):
                    if f is not None:
                        spec.samples(f, list(spec.tasks[task]))
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tasks:
        print("\n".join(spec.tasks))
    elif args.multitask:
        print("yes" if spec.multitask else "no")
    else:
        print(f"{spec.file}: {len(spec.classes)} classes, splits {', '.join(spec.splits)}, "
              f"tasks {', '.join(spec.tasks) or '(none)'}, multitask {'yes' if spec.multitask else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
