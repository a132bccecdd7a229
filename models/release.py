"""Release: a checkpoint -> an immutable, content-addressed bundle folder, the one artifact serving reads.

    python -m models.release artifacts/uni/exp1/best.pt [--data DIR] --out bundles/
    python -m models.release --best artifacts/uni --report results --out artifacts/bundles

Release is the one step after training that reads the dataset: it fits the OOD detectors on the
train split and chooses the default scorer on val + ood_val (models/ood.py), sets every scorer's
threshold on val at the stated TPR (models.ood.threshold_at_tpr, as `python -m pipeline
threshold`), stores the checkpoint's temperature scaling (models/calibration.py; fitted on the same
val outputs when the checkpoint has none) in bundle.json's `calibration`, chooses how the model
answers each binary task on val (and the task's ext_val sets; models/task_rules.py) into
bundle.json's `tasks`, exports the
BatchNorm-folded model to ONNX with its logits and hidden features (models/serving.py) and checks the graph against eager PyTorch on batches of 1 and 3. The folder's
layout and id are defined by its reader, pipeline/bundle.py.

`--best RUN_DIR` releases the trial of a run whose checkpoint has the highest validation accuracy
(`best_val_acc`: chosen on val only). `--report RESULTS` (the folder `evaluate.py report` wrote)
puts the run's test and OOD figures with their intervals in MODEL_CARD.md (models/card.py).

The exporter is torch's current one (dynamo) when it round-trips, else the TorchScript one, and
bundle.json says which and why. Writing is atomic (a temporary folder beside, then one rename); a
release whose id exists already leaves that folder as it is.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from data.images import content_hash
from data.loading import IMAGENET_MEAN, IMAGENET_STD
from models import calibration as calib
from models import checkpoint as checkpoints
from models import task_rules
from models import ood
from models.card import model_card, report_figures
from models.checkpoint import CheckpointError, heads_of
from models.detectors import FEATURES
from models.paradigms import RANKINGS
from models.serving import OPSETS, export_onnx
from pipeline import bundle as layout
from pipeline.model import DEFAULT_TOP2, DEFAULT_TPR
from provenance import provenance
from utils import to_numpy

ATOL = RTOL = 1e-4  # ONNX Runtime v eager: |onnx - eager| <= ATOL + RTOL * |eager|, logits and features
CHECK_BATCHES = (1, 3)


class ReleaseError(ValueError):
    """A checkpoint that cannot be released; the message says why."""


# --- the exported graph ----------------------------------------------------------------------

def onnx_check(graph: bytes, model, crop: int) -> dict:
    """Largest |ONNX Runtime - eager| of logits and features on seeded batches of CHECK_BATCHES;
    `ok` when every value is within ATOL + RTOL * |eager|."""
    import onnxruntime as ort
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    worst, ok = {"logits": 0.0, "features": 0.0}, True
    model = model.cpu().eval()
    for n in CHECK_BATCHES:
        x = torch.randn(n, 3, crop, crop, generator=gen)
        with torch.no_grad():
            eager = dict(zip(worst, (t.numpy() for t in model(x, features=True))))
        got = dict(zip(worst, session.run(["logits", "features"], {"images": x.numpy()})))
        for name in worst:
            diff = np.abs(got[name] - eager[name])
            worst[name] = max(worst[name], float(diff.max()))
            ok = ok and bool((diff <= ATOL + RTOL * np.abs(eager[name])).all())
    return {"batches": list(CHECK_BATCHES), "max_abs_diff": worst, "ok": ok}


def export_graph(ckpt) -> tuple[bytes, dict, dict]:
    """(model.onnx bytes, {exporter, reason, opset}, the round-trip check): dynamo when it exports
    and round-trips, else TorchScript with the reason dynamo was not used."""
    reason = None
    try:
        graph = export_onnx(ckpt.model, ckpt.crop, "dynamo")
        check = onnx_check(graph, ckpt.model, ckpt.crop)
        if check["ok"]:
            return graph, {"exporter": "dynamo", "reason": "the current exporter; it round-trips", "opset": OPSETS["dynamo"]}, check
        reason = f"the dynamo graph differs from eager by {check['max_abs_diff']}"
    except ImportError as e:
        reason = f"the dynamo exporter needs a package that is not installed ({e})"
    except Exception as e:  # any exporter failure: the TorchScript exporter is the tested fallback
        reason = f"the dynamo exporter failed ({type(e).__name__}: {str(e).splitlines()[0][:300]})"
    print(f"warning: {reason}; exporting with the TorchScript exporter", file=sys.stderr)
    graph = export_onnx(ckpt.model, ckpt.crop, "torchscript")
    check = onnx_check(graph, ckpt.model, ckpt.crop)
    if not check["ok"]:
        raise ReleaseError(f"{ckpt.path}: neither ONNX exporter round-trips ({reason}; TorchScript: "
                           f"{check['max_abs_diff']})")
    return graph, {"exporter": "torchscript", "reason": reason, "opset": OPSETS["torchscript"]}, check


# --- the OOD filter as plain arrays ------------------------------------------------------------

def detector_arrays(filt: ood.OODFilter) -> tuple[dict, dict[str, np.ndarray]]:
    """({detector: scalar parameters}, {"<detector>.<name>": array}) of the fitted detectors."""
    params, arrays = {}, {}
    for name, det in filt.detectors.items():
        params[name] = {}
        for key, value in det.state().items():
            if isinstance(value, torch.Tensor):
                arrays[f"{name}.{key}"] = to_numpy(value)
            else:
                params[name][key] = value
    return params, arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (np.load reads it) with fixed member times and order: np.savez stamps the clock
    into the zip, which would give one checkpoint a new id every release."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    return buf.getvalue()


def val_thresholds(filt: ood.OODFilter, ckpt, logits: torch.Tensor, features: torch.Tensor, tpr: float) -> dict:
    """{scorer: threshold at `tpr` on val} for every scorer, so a bundle serves any of them."""
    from models.inference import valid_rows
    ok = valid_rows(logits)
    return {name: ood.threshold_at_tpr(s, tpr) for name, s in filt.scores(logits[ok], features[ok], ckpt.paradigm).items()}


# --- bundle.json (the card: models/card.py) ---------------------------------------------------

def manifest(ckpt, spec, filt: ood.OODFilter, fitted: dict, thresholds: dict, tpr: float, export: dict,
             detector_params: dict, width: int, calibration: dict, tasks: dict) -> dict:
    p = ckpt.paradigm
    trained = {k: v for k, v in ckpt.provenance().items() if k != "checkpoint"}  # a path is no content
    chosen = thresholds[filt.default]
    return {
        "format": layout.FORMAT, "name": ckpt.name,
        "paradigm": {"name": p.name, "task": p.task, "title": p.label, "classes": list(p.classes),
                     "heads": heads_of(p), "labels": p.labels},
        "transform": {"resize": [ckpt.resize, ckpt.resize], "crop": [ckpt.crop, ckpt.crop],
                      "interpolation": "bilinear (PIL, antialiased)", "mean": list(IMAGENET_MEAN),
                      "std": list(IMAGENET_STD),
                      "steps": "RGB; resize to `resize`; centre crop to `crop`; /255; (x - mean) / std; NCHW float32"},
        "outputs": {"logits": sum(h.size for h in p.heads), "features": width, "features_are": FEATURES},
        "top2": {"rule": DEFAULT_TOP2, "rules": list(RANKINGS),
                 "exclusive": {t: list(pair) for t, pair in spec.tasks.items() if frozenset(pair) in p.exclusive}},
        "ood": {"default": filt.default, "rule": ood.RULE, "paper_scorer": p.paper_scorer,
                "selection": filt.selection, "ood_val": fitted["ood_val"], "n_train": fitted["n_train"],
                "tpr": tpr, "thresholds": {n: t["threshold"] for n, t in thresholds.items()},
                "n_val": chosen["n_val"], "val_accepted": chosen["val_accepted"],
                "features": FEATURES, "detectors": detector_params},
        "calibration": calibration,
        "tasks": tasks,
        "export": export,
        "validation": {"best_val_acc": ckpt.state.get("best_val_acc"), **(ckpt.state.get("val") or {})},
        "provenance": {"checkpoint_sha256": content_hash(ckpt.path), "spec": spec.name,
                       "spec_sha256": content_hash(spec.file), "trained": trained, "train_args": ckpt.args},
    }


# --- writing -----------------------------------------------------------------------------------

def write_bundle(out: Path, files: dict[str, bytes], meta: dict) -> tuple[Path, bool]:
    """(the bundle folder, whether this call wrote it): atomic, and never over an existing id."""
    hashes = {name: layout.sha256_bytes(data) for name, data in files.items()}
    meta = {**meta, "files": hashes}
    meta["id"] = layout.bundle_id(hashes, meta)
    dest = out / meta["id"]
    if dest.exists():
        return dest, False
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{meta['id']}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, data in {**files, layout.MANIFEST: (json.dumps(meta, indent=2) + "\n").encode()}.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp / name, 0o444)
        try:
            os.rename(tmp, dest)
        except OSError:  # another release of the same content won the race: theirs stands
            if not dest.is_dir():
                raise
            return dest, False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, True


def best_trial(run_dir: str | Path) -> tuple[Path, float]:
    """(the RUN_DIR/<trial>/best.pt with the highest validation accuracy, that accuracy); ties go to
    the first trial in natural order (exp2 before exp10)."""
    def natural(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.parent.name)]
    accs = {p: checkpoints.read(p).get("best_val_acc") for p in sorted(Path(run_dir).glob("*/best.pt"), key=natural)}
    accs = {p: a for p, a in accs.items() if a is not None}
    if not accs:
        raise ReleaseError(f"{run_dir}: no <trial>/best.pt that records a validation accuracy; train first")
    best = max(accs, key=accs.get)
    return best, accs[best]


def release(ckpt_path: str | Path, data: str | Path | None = None, out: str | Path = "bundles",
            tpr: float = DEFAULT_TPR, device="cpu", batch_size: int = 32, workers: int = 0,
            progress: bool = False, report: str | Path | None = None) -> tuple[Path, bool]:
    """Release one checkpoint (module doc): (the bundle folder, whether it was written now);
    `report`: the evaluation report whose figures go in the card."""
    from data.spec import load_spec
    from models.inference import predict_features
    if not 0 < tpr <= 1:
        raise ReleaseError(f"--tpr must be in (0, 1]; got {tpr}")
    data = data or checkpoints.read(ckpt_path)["args"].get("data")
    if not data:
        raise ReleaseError(f"{ckpt_path}: records no dataset; pass --data DATASET (release fits the OOD filter on it)")
    spec = load_spec(data)
    ckpt = checkpoints.load(ckpt_path, spec, device)
    figures = report_figures(report, ckpt.paradigm.run_name, content_hash(ckpt.path), spec.name) if report else None
    cache = {}

    def extract(name, items):  # val is read by the scorer choice and again for the thresholds
        if name not in cache:
            cache[name] = predict_features(ckpt.model, items, ckpt.transform(), batch_size, device,
                                           desc=f"{name} features", progress=progress, workers=workers)
        return cache[name]

    filt, fitted = ood.fit_filter(ckpt, spec, extract=extract)
    logits, features = extract("val", spec.split_samples("val", list(ckpt.paradigm.classes)))
    thresholds = val_thresholds(filt, ckpt, logits, features, tpr)
    record, how = calib.of_checkpoint(ckpt, lambda: calib.val_outputs(ckpt, spec, extract))
    tasks = task_rules.of_checkpoint(ckpt, spec, extract)
    graph, export, check = export_graph(ckpt)
    params, arrays = detector_arrays(filt)
    meta = manifest(ckpt, spec, filt, fitted, thresholds, tpr, export, params, features.shape[1],
                    {**record, "fitted": how}, tasks)
    files = {layout.MODEL: graph, layout.DETECTORS: npz_bytes(arrays), layout.CARD: model_card(meta, figures).encode()}
    meta["release"] = {"checkpoint": str(ckpt.path), "data": str(spec.root), "export_check": check,
                       "provenance": provenance(device)}
    return write_bundle(Path(out), files, meta)


def describe(path: Path, created: bool) -> str:
    """One line on a release: where its bundle is, and what it serves with."""
    b = layout.Bundle.load(path)
    return (f"{'wrote' if created else 'already released, left as it is:'} {path} ({b.manifest['name']}; "
            f"{b.manifest['export']['exporter']} export; OOD scorer {b.default_scorer}, threshold "
            f"{b.threshold():.4g} at TPR {b.manifest['ood']['tpr']:g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.release", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", help="a train.py checkpoint (best.pt), or give --best RUN_DIR")
    ap.add_argument("--best", metavar="RUN_DIR",
                    help="release the trial of RUN_DIR (e.g. artifacts/uni) with the highest validation accuracy")
    ap.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    ap.add_argument("--out", default="bundles", help="folder of bundles; this one goes to OUT/<id> (default bundles)")
    ap.add_argument("--report", metavar="RESULTS",
                    help="the run's evaluation report (evaluate.py report's --out, or its summary.json): its "
                         "test and OOD figures with their intervals go in MODEL_CARD.md")
    ap.add_argument("--tpr", type=float, default=DEFAULT_TPR,
                    help=f"fraction of val images the OOD threshold accepts (default {DEFAULT_TPR})")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda: where features are computed (default auto)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)
    if (args.checkpoint is None) == (args.best is None):
        ap.error("give a checkpoint or --best RUN_DIR (one of them)")
    from data.spec import SpecError
    from utils import resolve_device
    try:
        ckpt = args.checkpoint
        if args.best:
            ckpt, acc = best_trial(args.best)
            print(f"best trial of {args.best} by validation accuracy: {ckpt.parent.name} ({acc:.4f})")
        path, created = release(ckpt, args.data, args.out, args.tpr, resolve_device(args.device),
                                args.batch_size, args.workers, args.progress, args.report)
        print(describe(path, created))
    except (SpecError, CheckpointError, ReleaseError, layout.BundleError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
