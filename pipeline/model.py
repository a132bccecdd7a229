"""The deployed model: a train.py checkpoint, its OOD score, its threshold and its top-2.

`Predictor.load(ckpt)` rebuilds the network, names it (`pmg-<backbone>-<run>`) and versions it by
the checkpoint's content hash. The OOD threshold is stored beside the checkpoint in
`<ckpt>.threshold.json` (keyed by that hash): chosen on the validation split so that a stated
fraction (TPR, default 0.95) of in-distribution val images score at or above it. It is computed
by `python -m pipeline threshold`, or at first use from the dataset the checkpoint was trained on.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data.images import content_hash
from data.loading import eval_transform
from data.spec import parse_spec
from evaluation.scores import SCORERS
from models import model_from_checkpoint
from utils import CheckpointError, load_checkpoint

DEFAULT_TPR = 0.95


class ThresholdError(ValueError):
    """No OOD threshold can be found or computed; the message says how to get one."""


def threshold_file(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.name + ".threshold.json")


@dataclass
class Predictor:
    model: torch.nn.Module
    classes: list[str]
    crop: int
    name: str
    version: str
    ckpt_path: Path
    ckpt_args: dict
    score: str = "max_logit"
    threshold: float | None = None
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, path: str | Path, score: str = "max_logit", device: str = "cpu") -> "Predictor":
        path = Path(path)
        ckpt = load_checkpoint(path)
        heads = ckpt.get("heads") or []
        if len(heads) != 1 or heads[0][1] != "softmax":
            raise CheckpointError(f"{path}: the pipeline serves one-softmax-head models (paradigm uni or "
                                  f"task); this one has heads {[h[:2] for h in heads]} "
                                  f"(paradigm {ckpt.get('paradigm')})")
        if score not in SCORERS:
            raise ValueError(f"unknown OOD score '{score}'; choose one of {', '.join(SCORERS)}")
        args = ckpt["args"]
        model, _ = model_from_checkpoint(ckpt, parse_spec(ckpt["spec"], Path(".")), path)
        dev = torch.device(device)
        model.to(dev).eval()
        run = f"{ckpt['paradigm']}_{ckpt['task']}" if ckpt.get("task") else ckpt["paradigm"]
        return cls(model, list(heads[0][2]), int(args["crop"]), f"pmg-{args['backbone']}-{run}",
                   content_hash(path)[:16], path, args, score, None, dev)

    def transform(self):
        return eval_transform(self.crop)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).float().cpu()

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(OOD scores, top-2 probabilities, top-2 class indices) for a batch of images."""
        z = self.logits(x)
        probs = z.softmax(1)
        top = probs.topk(min(2, probs.shape[1]), dim=1)
        return SCORERS[self.score](z), top.values, top.indices

    # --- threshold -------------------------------------------------------------------------
    def val_scores(self, data: str | Path, workers: int = 0, batch_size: int = 64) -> torch.Tensor:
        from data.spec import load_spec
        from evaluation.inference import predict, valid_rows
        items = load_spec(data).split_samples("val", self.classes)
        try:
            z = predict(self.model, items, self.crop, batch_size, self.device, "val scores", False, workers)
        except ValueError as e:
            raise ThresholdError(f"{data}: {e}") from None
        return SCORERS[self.score](z[valid_rows(z)])

    def compute_threshold(self, data: str | Path, tpr: float = DEFAULT_TPR, workers: int = 0) -> dict:
        """Pick the threshold on the val split, write it beside the checkpoint and use it."""
        if not 0 < tpr <= 1:
            raise ThresholdError(f"--tpr must be in (0, 1]; got {tpr}")
        s = self.val_scores(data, workers).sort().values
        # The largest threshold that still accepts ceil(tpr * n) val images.
        k = len(s) - math.ceil(tpr * len(s))
        rec = {"model_version": self.version, "model_name": self.name, "score": self.score, "tpr": tpr,
               "threshold": float(s[k]), "n_val": len(s), "data": str(data),
               "val_accepted": float((s >= s[k]).float().mean())}
        f = threshold_file(self.ckpt_path)  # atomic: consumers starting together may all write it
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(rec, indent=2) + "\n")
            os.replace(tmp, f)
        except OSError as e:  # a read-only model volume: use it for this run only
            print(f"warning: could not store the threshold in {f} ({e}); using it for this run only",
                  file=sys.stderr)
        self.threshold = rec["threshold"]
        return rec

    def resolve_threshold(self, override: float | None = None, data: str | Path | None = None,
                          tpr: float = DEFAULT_TPR) -> float:
        """--threshold, else the stored one for this checkpoint and score, else compute it on the
        val split of --data or of the dataset the checkpoint was trained on (and store it)."""
        if override is not None:
            self.threshold = float(override)
            return self.threshold
        f = threshold_file(self.ckpt_path)
        if f.is_file():
            rec = json.loads(f.read_text())
            if rec.get("model_version") == self.version and rec.get("score") == self.score and \
                    (data is None or rec.get("tpr") == tpr):
                self.threshold = float(rec["threshold"])
                return self.threshold
        data = data or self.ckpt_args.get("data")
        if not data or not (Path(data) / "dataset.yaml").is_file():
            raise ThresholdError(
                f"{self.ckpt_path}: no OOD threshold stored for this checkpoint ({f.name}) and its training "
                f"data '{data}' is not here; run 'python -m pipeline threshold --checkpoint "
                f"{self.ckpt_path} --data DATASET' or pass --threshold")
        return self.compute_threshold(data, tpr)["threshold"]

    def rows(self, scores, top_p, top_i) -> list[dict]:
        """The prediction columns of each image (status ok or ood)."""
        out = []
        for s, p, i in zip(scores.tolist(), top_p.tolist(), top_i.tolist()):
            ood = self.threshold is not None and s < self.threshold
            out.append({"model_name": self.name, "model_version": self.version, "ood_score": s,
                        "ood_threshold": self.threshold, "is_ood": ood,
                        "top1_label": self.classes[i[0]], "top1_prob": p[0],
                        "top2_label": self.classes[i[1]] if len(i) > 1 else None,
                        "top2_prob": p[1] if len(p) > 1 else None,
                        "status": "ood" if ood else "ok", "error": None})
        return out

    def error_row(self, message: str) -> dict:
        return {"model_name": self.name, "model_version": self.version, "ood_score": None,
                "ood_threshold": self.threshold, "is_ood": None, "top1_label": None, "top1_prob": None,
                "top2_label": None, "top2_prob": None, "status": "error", "error": message}
