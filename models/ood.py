"""The OOD filter of a checkpoint: its fitted feature detectors, one table of scorers, and the default.

Scorers are one table: the logit scorers of models.scores (`SCORERS`, e.g. max_logit) and the
feature detectors of models.detectors (`DETECTORS`, e.g. knn, vim); `OODFilter.score(name, logits,
features)` answers for either, from the same forward pass.

The default scorer of a checkpoint is chosen by one rule that sees only the train split (to fit
the detectors), the val split and the spec's `ood_val` sets, never the reported OOD sets:
    the scorer with the highest mean AUROC over the ood_val sets (in-distribution: the val split),
    ties broken by the lower mean FPR@95; with no ood_val sets in the spec, the paradigm's paper
    score (`Paradigm.paper_scorer`).
The pipeline serves with the default (its threshold chosen on val as before) and evaluation reports
it. Fitting and choosing need scikit-learn (the AUROC), which the serving image does not ship: fit
where the training data is (`python -m models.ood fit`) and ship the file with the checkpoint.

The file `<ckpt>.detectors.pt` (read with weights_only=True: tensors and plain data) stores the
content hash of the checkpoint it belongs to: `load` refuses another checkpoint's file, naming
both; `fitted_for` refits when it is missing or stale. CLI:
    python -m models.ood fit --checkpoint CKPT [--data DIR]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.checkpoint import CheckpointError
from models.detectors import DETECTORS, FEATURES, fit_all
from models.pmg import CONCAT
from models.scores import SCORERS
from pipeline.outputs import SCORER_NAMES, check_scorer

FORMAT = 2
RULE = ("highest mean AUROC over the ood_val sets (in-distribution: the val split), ties by lower mean "
        "FPR@95; no ood_val sets: the paradigm's paper score")


class DetectorFileError(CheckpointError):
    """A detector file that does not belong to this checkpoint or cannot be read; names both files."""


@dataclass
class OODFilter:
    detectors: dict
    default: str
    selection: dict = field(default_factory=dict)  # scorer -> {"auroc", "fpr95"}: means over ood_val

    def score(self, name: str, logits: torch.Tensor, features: torch.Tensor, paradigm) -> torch.Tensor:
        """(N,) scores, higher = more in-distribution."""
        if name in SCORERS:
            return SCORERS[name](logits, paradigm)
        return self.detectors[check_scorer(name)].score(features)

    def scores(self, logits: torch.Tensor, features: torch.Tensor, paradigm) -> dict[str, torch.Tensor]:
        """Every scorer of the table."""
        return {name: self.score(name, logits, features, paradigm) for name in (*SCORERS, *self.detectors)}


def heads_linear(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The concat classifier's heads as one Linear map: (weight (C, D), bias (C,)), in logit order."""
    heads = list(model.classifiers[CONCAT].heads.values())
    return torch.cat([h.weight for h in heads]).detach().cpu(), torch.cat([h.bias for h in heads]).detach().cpu()


def choose_default(paradigm, id_scores: dict, ood_scores: dict[str, dict]) -> tuple[str, dict]:
    """(the default scorer by RULE, {scorer: mean AUROC and FPR@95 over the ood_val sets})."""
    if not ood_scores:
        return paradigm.paper_scorer, {}
    try:
        from evaluation.metrics import detection
    except ImportError as e:
        raise DetectorFileError(f"choosing the default OOD scorer needs scikit-learn ({e}); fit the detectors "
                                f"where the full requirements are installed: python -m models.ood fit") from None
    import numpy as np
    table = {}
    for name, s_id in id_scores.items():
        rows = []
        for scores in ood_scores.values():
            y = np.r_[np.ones(len(s_id), int), np.zeros(len(scores[name]), int)]
            rows.append(detection(y, np.r_[s_id.numpy(), scores[name].numpy()]))
        table[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("auroc", "fpr95")}
    best = max(table, key=lambda n: (table[n]["auroc"], -table[n]["fpr95"]))
    return best, table


# --- the detector file ------------------------------------------------------------------------

def detector_file(ckpt_path: str | Path) -> Path:
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(ckpt_path.name + ".detectors.pt")


def checkpoint_hash(ckpt_path: str | Path) -> str:
    from data.images import content_hash
    return content_hash(ckpt_path)


def save(ckpt_path: str | Path, filt: OODFilter, meta: dict, ckpt_hash: str | None = None) -> Path:
    """Write `<ckpt>.detectors.pt` atomically, keyed by the checkpoint's content hash."""
    file = detector_file(ckpt_path)
    state = {"format": FORMAT, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt_hash or checkpoint_hash(ckpt_path),
             "features": FEATURES, "rule": RULE, **meta, "default": filt.default, "selection": filt.selection,
             "detectors": {n: d.state() for n, d in filt.detectors.items()}}
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return file


def load(ckpt_path: str | Path, ckpt_hash: str | None = None) -> OODFilter:
    """The OOD filter of this checkpoint; DetectorFileError (naming both files) when the file is
    missing, unreadable, of another format or fitted for another checkpoint."""
    from utils import read_torch_file
    file = detector_file(ckpt_path)
    fix = f"refit them: python -m models.ood fit --checkpoint {ckpt_path}"
    state = read_torch_file(file, DetectorFileError, f"OOD detector file of {ckpt_path} ({fix})")
    if not isinstance(state, dict) or state.get("format") != FORMAT or set(state.get("detectors") or {}) != set(DETECTORS):
        raise DetectorFileError(f"{file}: not a detector file of format {FORMAT} with {', '.join(DETECTORS)}; {fix}")
    actual = ckpt_hash or checkpoint_hash(ckpt_path)
    if state.get("checkpoint_sha256") != actual:
        raise DetectorFileError(f"{file}: fitted for a checkpoint with content hash "
                                f"{str(state.get('checkpoint_sha256'))[:12]}, but {ckpt_path} has {actual[:12]} "
                                f"(the checkpoint changed or the file was copied); {fix}")
    detectors = {n: DETECTORS[n].from_state(s) for n, s in state["detectors"].items()}
    return OODFilter(detectors, state["default"], state.get("selection") or {})


def fit_filter(ckpt, spec, *, batch_size: int = 32, device="cpu", progress: bool = True, workers: int = 0,
               extract=None) -> tuple[OODFilter, dict]:
    """(the filter, what it was fitted on): every detector fitted on the train split of `spec`
    (the checkpoint's classes, its eval transform), the default chosen on val and ood_val; nothing
    written. `extract(name, items) -> (logits, features)` replaces models.inference.predict_features
    (evaluation passes its cache); names: train, val, ood_val/<set>."""
    if extract is None:
        from models.inference import predict_features

        def extract(name, items):
            return predict_features(ckpt.model, items, ckpt.transform(), batch_size, device, desc=f"{name} features",
                                    progress=progress, workers=workers)
    from models.inference import valid_rows
    classes = list(ckpt.paradigm.classes)
    items = spec.split_samples("train", classes)
    _, feats = extract("train", items)
    detectors = fit_all(feats, torch.tensor([classes.index(c) for _, c in items]), *heads_linear(ckpt.model))
    filt = OODFilter(detectors, ckpt.paradigm.paper_scorer)

    def scores(name, items):
        logits, features = extract(name, items)
        ok = valid_rows(logits)
        return filt.scores(logits[ok], features[ok], ckpt.paradigm)

    ood = {name: scores(f"ood_val/{name}", [(p, None) for p in spec.flat_images(folder)])
           for name, folder in spec.ood_val.items()}
    id_scores = scores("val", spec.split_samples("val", classes)) if ood else {}
    filt.default, filt.selection = choose_default(ckpt.paradigm, id_scores, ood)
    return filt, {"data": str(spec.root), "classes": classes, "n_train": len(items), "ood_val": sorted(spec.ood_val)}


def fit_checkpoint(ckpt, spec, *, ckpt_hash: str | None = None, **kwargs) -> OODFilter:
    """`fit_filter`, then write the detector file beside the checkpoint."""
    filt, meta = fit_filter(ckpt, spec, **kwargs)
    save(ckpt.path, filt, meta, ckpt_hash)
    return filt


def threshold_at_tpr(scores: torch.Tensor, tpr: float) -> dict:
    """The largest threshold that still accepts ceil(tpr * n) of these in-distribution scores
    (an image is OOD when its score is below it): {threshold, n_val, val_accepted}."""
    if not 0 < tpr <= 1:
        raise ValueError(f"the TPR must be in (0, 1]; got {tpr}")
    if not len(scores):
        raise ValueError("no val scores to choose an OOD threshold on")
    s = scores.sort().values
    k = len(s) - math.ceil(tpr * len(s))
    return {"threshold": float(s[k]), "n_val": len(s), "val_accepted": float((s >= s[k]).float().mean())}


def fitted_for(ckpt, spec, **kwargs) -> OODFilter:
    """The checkpoint's OOD filter: from its file when that is current, else fitted and written."""
    ckpt_hash = checkpoint_hash(ckpt.path)
    if detector_file(ckpt.path).is_file():
        try:
            return load(ckpt.path, ckpt_hash)
        except DetectorFileError as e:
            print(f"warning: {str(e).split('; refit')[0]}; refitting", file=sys.stderr)
    return fit_checkpoint(ckpt, spec, ckpt_hash=ckpt_hash, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.ood", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit every detector on the train split, choose the default on val and "
                                     "ood_val; write <ckpt>.detectors.pt")
    fit.add_argument("--checkpoint", required=True, help="a train.py checkpoint (best.pt)")
    fit.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    fit.add_argument("--device", default="auto", help="auto (cuda when visible, else cpu) | cpu | cuda (default auto)")
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--workers", type=int, default=0)
    fit.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from data.spec import SpecError, load_spec
    from models import checkpoint as checkpoints
    from utils import resolve_device
    try:
        data = args.data or checkpoints.read(args.checkpoint)["args"]["data"]
        spec = load_spec(data)
        device = resolve_device(args.device)
        ckpt = checkpoints.load(args.checkpoint, spec, device)
        filt = fit_checkpoint(ckpt, spec, batch_size=args.batch_size, device=device,
                              progress=not args.no_progress, workers=args.workers)
    except (SpecError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    chosen = filt.selection.get(filt.default)
    why = (f"mean ood_val AUROC {chosen['auroc']:.3f}, FPR@95 {chosen['fpr95']:.3f}" if chosen
           else "no ood_val sets: the paper's score")
    print(f"wrote {detector_file(args.checkpoint)} ({', '.join(filt.detectors)} on {spec.root} train); "
          f"default scorer {filt.default} ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
