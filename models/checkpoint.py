"""The checkpoint: the one place that writes and reads its keys.

A checkpoint is one dict (torchvision-references style), written atomically by `save` and read
with `weights_only=True` (no code runs from the file):
  format, model, optimizer, scheduler, scaler, epoch, args (train.py's resolved flags),
  paradigm, task, classes, heads, spec (the dataset spec it was trained on), val, best_val_acc,
  best_val_loss, selection (the rule that picks best.pt), provenance (provenance.py: the commit,
  packages, CPU, threads and device that wrote it; absent from older files), calibration (the
  temperature scaling train.py fits on val at the end, models/calibration.py, written by
  `save_calibration`; best.pt only, absent from older files); an extended model (extend.py) also
  parent (the checkpoint it grew from: path, content hash, classes) and added (what it added and how).
`training_state` builds it; `load` reads it into a `Checkpoint` (model, paradigm, spec, transform,
provenance); `restore_training` puts it back into a model/optimizer/scheduler/scaler for --resume.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.spec import Spec, parse_spec
from models import build_model
from models.paradigms import Paradigm, build_paradigm
from provenance import provenance
from utils import plain, read_torch_file

FORMAT = 1


PROTOCOL = ("method", "budget", "mix", "mix_prob", "mix_alpha", "augment", "zero_grad", "bn_stats", "jigsaw", "lr",
            "batch_size", "epochs_run", "budget_batches")  # the training flags a report shows beside a run


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and why."""


def heads_of(paradigm: Paradigm) -> list[list]:
    return [[h.name, h.kind, list(h.classes)] for h in paradigm.heads]


def training_state(model, paradigm: Paradigm, spec: Spec, args, optimizer, scheduler, scaler, epoch: int,
                   val: dict, best: dict | None, selection: str, parent: dict | None = None,
                   added: dict | None = None) -> dict:
    """Everything a run needs to be evaluated, served or resumed; `best` = {acc, loss} of the best
    epoch so far, `selection` the rule that chose it; `parent`/`added`: the provenance of a model
    that extend.py grew from another checkpoint (plain data; absent for a trained model)."""
    lineage = {k: plain(v) for k, v in (("parent", parent), ("added", added)) if v is not None}
    weight = next(model.parameters(), None)
    return {**lineage, "format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
            "args": plain(vars(args) if not isinstance(args, dict) else args), "paradigm": paradigm.name,
            "task": paradigm.task, "classes": list(paradigm.classes), "heads": heads_of(paradigm),
            "spec": spec.as_dict(), "val": plain(val), "best_val_acc": (best or {}).get("acc"),
            "best_val_loss": (best or {}).get("loss"), "selection": selection,
            "provenance": provenance(None if weight is None else weight.device)}


def save(state: dict, path: str | Path) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename over `path`: a crash
    at any point leaves either the previous checkpoint or the new one, never a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: str | Path) -> dict:
    """The raw dict of a train.py checkpoint, or CheckpointError naming the file."""
    state = read_torch_file(path, CheckpointError, "checkpoint of this project")
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint written by train.py (format {FORMAT}); "
                              f"a bare state_dict goes to --pretrained instead")
    return state


@dataclass
class Checkpoint:
    """A trained model rebuilt from its file (in eval mode), with what it was trained on."""
    path: Path
    model: torch.nn.Module
    paradigm: Paradigm
    spec: Spec
    args: dict
    epoch: int | None
    state: dict = field(repr=False)

    @property
    def crop(self) -> int:
        return int(self.args["crop"])

    @property
    def resize(self) -> int:
        return int(self.args["resize"])

    @property
    def backbone(self) -> str:
        return self.args["backbone"]

    @property
    def name(self) -> str:
        """What the prediction table calls this model, e.g. pmg-resnet50-uni."""
        return f"pmg-{self.backbone}-{self.paradigm.run_name}"

    def transform(self):
        from data.loading import eval_transform
        return eval_transform(self.resize, self.crop)

    def pixels(self):
        """`transform` up to uint8 pixels (serving: normalised per batch, data.loading.normalize_pixels)."""
        from data.loading import eval_pixels
        return eval_pixels(self.resize, self.crop)

    @property
    def calibration(self) -> dict | None:
        """The temperature scaling fitted on val (models/calibration.py); None in an older file."""
        return self.state.get("calibration")

    def provenance(self) -> dict:
        a = self.args
        return {"checkpoint": str(self.path), "run": self.paradigm.run_name, "paradigm": self.paradigm.name,
                "task": self.paradigm.task, "classes": list(self.paradigm.classes), "epoch": self.epoch, "profile": a.get("profile"),
                "backbone": a.get("backbone"), "crop": a.get("crop"), "epochs": a.get("epochs"),
                "seed": a.get("seed"), "trial": a.get("trial"), "data": a.get("data"),
                "protocol": {k: a[k] for k in PROTOCOL if k in a}, "provenance": self.state.get("provenance"),
                **{k: self.state[k] for k in ("parent", "added") if k in self.state}}


def save_calibration(ckpt: Checkpoint, record: dict) -> None:
    """Write the checkpoint back to its file with its calibration record (atomically, `save`)."""
    save({**ckpt.state, "calibration": record}, ckpt.path)


def _check_dataset(state: dict, spec: Spec, path: Path) -> None:
    trained_on = list((state.get("spec") or {}).get("classes") or state.get("classes") or [])
    if trained_on != spec.class_names:
        raise CheckpointError(f"{path}: trained on a dataset with classes {trained_on}, but {spec.file} "
                              f"defines {spec.class_names}; evaluate it with the dataset it was trained on")


def _paradigm(state: dict, spec: Spec, path: Path) -> Paradigm:
    try:
        paradigm = build_paradigm(state["paradigm"], spec, state.get("task"))
    except Exception as e:
        raise CheckpointError(f"{path}: paradigm {state.get('paradigm')} {state.get('task') or ''} cannot be "
                              f"built from {spec.file}: {e}") from None
    stored = [list(h) for h in state.get("heads") or heads_of(paradigm)]
    if list(paradigm.classes) != list(state["classes"]) or heads_of(paradigm) != stored:
        raise CheckpointError(f"{path}: trained with classes {state['classes']} and heads {stored}, but "
                              f"{spec.file} gives {list(paradigm.classes)} and heads {heads_of(paradigm)}; "
                              f"use it with the dataset it was trained on")
    return paradigm


def load(path: str | Path, spec: Spec | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (no pretrained weights needed) in eval mode on `device`.

    With `spec` (evaluation) the checkpoint must have been trained on that dataset's classes and
    heads; without it (serving) the spec stored in the checkpoint is used."""
    path = Path(path)
    state = read(path)
    if spec is None:
        spec = parse_spec(state["spec"], Path("."))
    else:
        _check_dataset(state, spec, path)
    paradigm = _paradigm(state, spec, path)
    bad = next((k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise CheckpointError(f"{path}: weights are not finite (NaN or inf in {bad}): the run diverged; "
                              f"retrain with a lower --lr rather than evaluating or serving it")
    a = state["args"]
    model = build_model(a["backbone"], paradigm, "none", a["branch_mid"], a["branch_out"], a["hidden"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {a['backbone']} with these heads "
                              f"({str(e).splitlines()[0]})") from None
    return Checkpoint(path, model.to(device).eval(), paradigm, spec, a, state.get("epoch"), state)


def restore_training(state: dict, path, paradigm: Paradigm, spec: Spec, model, optimizer, scheduler,
                     scaler) -> tuple[int, dict | None]:
    """Load a run's state for --resume; (first epoch to run, best {acc, loss} so far)."""
    if (state["paradigm"], state["task"], state["classes"]) != (paradigm.name, paradigm.task, list(paradigm.classes)):
        raise CheckpointError(f"{path}: trained as {state['paradigm']} {state['task'] or ''} on classes "
                              f"{state['classes']}, but this run is {paradigm.name} {paradigm.task or ''} on "
                              f"{list(paradigm.classes)} ({spec.file}); resume with matching flags")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit this run's model (other --backbone or branch "
                              f"widths?): {str(e).splitlines()[0][:200]}") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # empty from a run without an enabled scaler (CPU, no AMP): the new run's starts fresh
        scaler.load_state_dict(state["scaler"])
    best = None if state.get("best_val_acc") is None else \
        {"acc": state["best_val_acc"], "loss": state.get("best_val_loss", float("inf"))}
    return state["epoch"] + 1, best
