"""Release: a checkpoint -> an immutable, content-addressed bundle folder, the one artifact serving reads.

    python -m models.release artifacts/uni/exp1/best.pt [--data DIR] --out bundles/

Release is the one step after training that reads the dataset: it fits the OOD detectors on the
train split and chooses the default scorer on val + ood_val (models/ood.py), sets every scorer's
threshold on val at the stated TPR (models.ood.threshold_at_tpr, as `python -m pipeline
threshold`), exports the BatchNorm-folded model to ONNX with its logits and hidden features
(models/serving.py) and checks the graph against eager PyTorch on batches of 1 and 3. The folder's
layout and id are defined by its reader, pipeline/bundle.py.

The exporter is torch's current one (dynamo) when it round-trips, else the TorchScript one, and
bundle.json says which and why. Writing is atomic (a temporary folder beside, then one rename); a
release whose id exists already leaves that folder as it is.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from data.images import content_hash
from data.loading import IMAGENET_MEAN, IMAGENET_STD
from models import checkpoint as checkpoints
from models import ood
from models.checkpoint import CheckpointError, heads_of
from models.detectors import FEATURES
from models.paradigms import RANKINGS
from models.serving import OPSETS, export_onnx
from pipeline import bundle as layout
from pipeline.model import DEFAULT_TOP2, DEFAULT_TPR
from provenance import provenance

ATOL = RTOL = 1e-4  # ONNX Runtime v eager: |onnx - eager| <= ATOL + RTOL * |eager|, logits and features
CHECK_BATCHES = (1, 3)
STAND_IN = "sofar-embedded"  # the name data.generate gives the procedurally generated dataset


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
                arrays[f"{name}.{key}"] = value.detach().cpu().numpy()
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


# --- bundle.json and the model card -----------------------------------------------------------

def manifest(ckpt, spec, filt: ood.OODFilter, fitted: dict, thresholds: dict, tpr: float, export: dict,
             detector_params: dict, width: int) -> dict:
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
        "export": export,
        "validation": {"best_val_acc": ckpt.state.get("best_val_acc"), **(ckpt.state.get("val") or {})},
        "provenance": {"checkpoint_sha256": content_hash(ckpt.path), "spec": spec.name,
                       "spec_sha256": content_hash(spec.file), "trained": trained, "train_args": ckpt.args},
    }


def model_card(m: dict) -> str:
    p, o, v = m["paradigm"], m["ood"], m["validation"]
    stand_in = m["provenance"]["spec"] == STAND_IN
    heads = "; ".join(f"{name} ({kind}: {', '.join(classes)})" for name, kind, classes in p["heads"])
    accs = "\n".join(f"| {k} | {val:.3f} |" for k, val in v.items() if k.startswith("val_acc") and val is not None)
    sel = "\n".join(f"| {n}{' (default)' if n == o['default'] else ''} | {s['auroc']:.3f} | {s['fpr95']:.3f} |"
                    for n, s in sorted(o["selection"].items(), key=lambda kv: -kv[1]["auroc"]))
    how = (f"the rule: {o['rule']}; mean over the ood_val sets {', '.join(o['ood_val'])}" if o["selection"]
           else f"no ood_val sets in the dataset: the paper's score for this design, {o['paper_scorer']}")
    data = (f"the procedurally generated stand-in dataset `{STAND_IN}` (SOFAR-Image is private): every "
            f"figure here is a figure about the stand-in, not about real photos" if stand_in
            else f"the dataset `{m['provenance']['spec']}`")
    return f"""# {m['name']}: {p['title']} classifier with an OOD filter

## Intended use
Sorting photos from a car-sharing fleet into {', '.join(p['classes'])}, after an out-of-distribution
(OOD) filter rejects photos that belong to none of them; each accepted photo gets its top-2 labels
({m['top2']['rule']} rule). Heads: {heads}. Not for photos of other domains, nor as the sole judge of
damage: a person reviews what the table flags.

## Data
Trained on {data}; dataset.yaml sha256 {m['provenance']['spec_sha256'][:16]}. The OOD detectors were
fitted on its train split ({o['n_train']} images); the scorer and threshold were chosen on its val
split and `ood_val` sets, never on the test or reported OOD sets.

## Figures available at release
Validation accuracy of the checkpoint ({v.get('val_images')} val images):

| measure | value |
|---|---|
{accs}

OOD scorer: **{o['default']}** ({how}); threshold {o['thresholds'][o['default']]:.4g}, which accepts
{o['val_accepted']:.1%} of the {o['n_val']} val images (stated TPR {o['tpr']:.0%}).

| scorer | mean ood_val AUROC | mean ood_val FPR@95 |
|---|---|---|
{sel or '| (no ood_val sets) | | |'}

Test-set and reported-OOD figures, with their intervals, are in the run's evaluation report
(`python evaluate.py`), not here.

## Known limits
- Content-poor photos (far too dark, shaken, a finger over the lens) pass the OOD filter: every
  detector scores them close to the classes, so they reach the classifier and get labels.
- The filter knows only the OOD kinds of its ood_val sets; a new kind of irrelevant photo may pass.
- {'These numbers are on the stand-in dataset: they say the system works end to end, not how well it sorts real photos.' if stand_in else 'Figures are from one training run; the report gives their spread over trials.'}
- The exported graph ({m['export']['exporter']} exporter, opset {m['export']['opset']}) expects {m['transform']['crop'][0]} px crops
  normalised as bundle.json's `transform` says.
"""


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


def release(ckpt_path: str | Path, data: str | Path | None = None, out: str | Path = "bundles",
            tpr: float = DEFAULT_TPR, device="cpu", batch_size: int = 32, workers: int = 0,
            progress: bool = False) -> tuple[Path, bool]:
    """Release one checkpoint (module doc): (the bundle folder, whether it was written now)."""
    from data.spec import load_spec
    from models.inference import predict_features
    if not 0 < tpr <= 1:
        raise ReleaseError(f"--tpr must be in (0, 1]; got {tpr}")
    data = data or checkpoints.read(ckpt_path)["args"].get("data")
    if not data:
        raise ReleaseError(f"{ckpt_path}: records no dataset; pass --data DATASET (release fits the OOD filter on it)")
    spec = load_spec(data)
    ckpt = checkpoints.load(ckpt_path, spec, device)
    cache = {}

    def extract(name, items):  # val is read by the scorer choice and again for the thresholds
        if name not in cache:
            cache[name] = predict_features(ckpt.model, items, ckpt.transform(), batch_size, device,
                                           desc=f"{name} features", progress=progress, workers=workers)
        return cache[name]

    filt, fitted = ood.fit_filter(ckpt, spec, extract=extract)
    logits, features = extract("val", spec.split_samples("val", list(ckpt.paradigm.classes)))
    thresholds = val_thresholds(filt, ckpt, logits, features, tpr)
    graph, export, check = export_graph(ckpt)
    params, arrays = detector_arrays(filt)
    meta = manifest(ckpt, spec, filt, fitted, thresholds, tpr, export, params, features.shape[1])
    files = {layout.MODEL: graph, layout.DETECTORS: npz_bytes(arrays), layout.CARD: model_card(meta).encode()}
    meta["release"] = {"checkpoint": str(ckpt.path), "data": str(spec.root), "export_check": check,
                       "provenance": provenance(device)}
    return write_bundle(Path(out), files, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.release", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a train.py checkpoint (best.pt)")
    ap.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    ap.add_argument("--out", default="bundles", help="folder of bundles; this one goes to OUT/<id> (default bundles)")
    ap.add_argument("--tpr", type=float, default=DEFAULT_TPR,
                    help=f"fraction of val images the OOD threshold accepts (default {DEFAULT_TPR})")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda: where features are computed (default auto)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)
    from data.spec import SpecError
    from utils import resolve_device
    try:
        path, created = release(args.checkpoint, args.data, args.out, args.tpr, resolve_device(args.device),
                                args.batch_size, args.workers, args.progress)
        b = layout.Bundle.load(path)
    except (SpecError, CheckpointError, ReleaseError, layout.BundleError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    o = b.manifest["ood"]
    print(f"{'wrote' if created else 'already released, left as it is:'} {path} ({b.manifest['name']}; "
          f"{b.manifest['export']['exporter']} export; OOD scorer {o['default']}, threshold "
          f"{b.threshold():.4g} at TPR {o['tpr']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
