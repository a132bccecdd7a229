"""The deployed model: a train.py checkpoint, its OOD score, its threshold and its top-2.

`Predictor.load(ckpt)` rebuilds the network through models.checkpoint, names it
(`pmg-<backbone>-<run>`) and versions it by the checkpoint's content hash. Every paradigm is
served the same way: one forward pass gives the logits and the hidden features; the OOD score is
the checkpoint's default scorer (models/ood.py: chosen on val + ood_val among the logit scores
and the feature detectors, kept in `<ckpt>.detectors.pt`; fitted at first use when that file is
missing and the training data is here; the paradigm's paper score when neither is) unless
`--score` names another, and the top-2 comes from the paradigm's label ranking (softmax
probabilities; for the multi-task model each head's own probability) under the `--top2` rule:
coherent by default (a label that the top-1 excludes, its task's other class, is skipped, so the
second label can be true beside the first; REPORT.md Table 5 measures both rules), or plain. Each
row records the scorer, threshold and top-2 rule that produced it.
The OOD threshold is stored beside the checkpoint in `<ckpt>.threshold.json` (keyed by that hash):
chosen on the validation split so that a stated fraction (TPR, default 0.95) of in-distribution
val images score at or above it. It is computed by `python -m pipeline threshold`, or at first use
from the dataset the checkpoint was trained on.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data.images import content_hash
from data.loading import normalize_pixels
from models import checkpoint as checkpoints
from models import ood
from models.checkpoint import Checkpoint
from models.paradigms import RANKINGS
from models.scores import SCORERS
from utils import resolve_device

DEFAULT_TPR = 0.95
DEFAULT_TOP2 = "coherent"  # measured against plain in REPORT.md Table 5 (docs/evaluation.md: the top-2 rule)


class ThresholdError(ValueError):
    """No OOD threshold can be found or computed; the message says how to get one."""


def ood_filter(ckpt: Checkpoint, device, needed: bool) -> ood.OODFilter | None:
    """The checkpoint's OOD filter: its detector file, or fitted now from the training data when
    that is here; None (serve with the paper's score, with a warning) when neither is, unless
    `needed` (a feature detector was asked for by name)."""
    data = ckpt.args.get("data")
    data_here = bool(data) and (Path(data) / "dataset.yaml").is_file()
    if not ood.detector_file(ckpt.path).is_file() and not data_here:
        message = (f"{ckpt.path}: no OOD detector file ({ood.detector_file(ckpt.path).name}) and the training data "
                   f"'{data}' is not here; fit it where the data is: python -m models.ood fit --checkpoint "
                   f"{ckpt.path} --data DATASET")
        if needed:
            raise ThresholdError(message)
        print(f"warning: {message}; serving with the paper's score {ckpt.paradigm.paper_scorer}", file=sys.stderr)
        return None
    from data.spec import SpecError, load_spec
    try:
        if not data_here:
            return ood.load(ckpt.path)
        return ood.fitted_for(ckpt, load_spec(data), device=device, progress=False)
    except (ood.DetectorFileError, SpecError) as e:
        raise ThresholdError(str(e)) from None


def threshold_file(ckpt: str | Path) -> Path:
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.name + ".threshold.json")


@dataclass
class Predictor:
    ckpt: Checkpoint
    version: str
    score: str
    filter: ood.OODFilter | None = None
    threshold: float | None = None
    device: torch.device = torch.device("cpu")
    backend: object = None  # models.serving: x -> (logits, features)
    top2: str = DEFAULT_TOP2  # the ranking rule of the top-2 (models.paradigms.RANKINGS)

    @classmethod
    def load(cls, path: str | Path, score: str | None = None, device: str = "cpu",
             backend: str = "torch", top2: str = DEFAULT_TOP2) -> "Predictor":
        """`score` None: the checkpoint's default scorer (module doc). `backend`: torch (BatchNorm
        folded, inference_mode) or onnx (ONNX Runtime on the exported graph), models/serving.py.
        `top2`: plain (by score) or coherent (the second label can be true beside the first).
        `device`: cpu, cuda, or auto (cuda when visible, else cpu; cpu for the onnx backend)."""
        from models.serving import build_backend
        if top2 not in RANKINGS:
            raise ValueError(f"unknown top-2 rule '{top2}'; choose one of {', '.join(RANKINGS)}")
        if device == "auto" and backend == "onnx":
            device = "cpu"  # the onnx backend runs on the CPU
        dev = resolve_device(device)
        ckpt = checkpoints.load(path, device=dev)
        # A logit score named by the caller needs no detectors: nothing to load or fit.
        filt = None if score in SCORERS else ood_filter(ckpt, dev, needed=score is not None)
        score = ood.check_scorer(score or (filt.default if filt else ckpt.paradigm.paper_scorer))
        return cls(ckpt, content_hash(ckpt.path)[:16], score, filt, None, dev,
                   build_backend(ckpt.model, backend, crop=ckpt.crop, device=dev), top2)

    @property
    def name(self) -> str:
        return self.ckpt.name

    @property
    def classes(self) -> list[str]:
        """The labels this model can write into the table."""
        return self.ckpt.paradigm.labels

    @property
    def ckpt_path(self) -> Path:
        return self.ckpt.path

    def transform(self):
        return self.ckpt.transform()

    def pixels(self):
        """The decode transform of serving: `transform` up to uint8 pixels; `forward` normalises
        the batch (on the model's device, so a GPU receives a quarter of the bytes)."""
        return self.ckpt.pixels()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, hidden features) of one forward pass over a batch of `transform` (float) or
        `pixels` (uint8) images."""
        if x.dtype == torch.uint8:
            x = normalize_pixels(x.to(self.device))
        return self.backend(x)

    def ood_scores(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.score in SCORERS:
            return SCORERS[self.score](logits, self.ckpt.paradigm)
        return self.filter.score(self.score, logits, features, self.ckpt.paradigm)

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[list[str]], torch.Tensor]:
        """(OOD scores, top-2 labels, their scores) for a batch of images."""
        z, f = self.forward(x)
        labels, top = self.ckpt.paradigm.top_labels(z, 2, self.top2)
        return self.ood_scores(z, f), labels, top

    # --- threshold -------------------------------------------------------------------------
    def val_scores(self, data: str | Path, workers: int = 0, batch_size: int = 64) -> torch.Tensor:
        from data.spec import load_spec
        from models.inference import predict_features, valid_rows
        items = load_spec(data).split_samples("val", list(self.ckpt.paradigm.classes))
        try:
            z, f = predict_features(self.ckpt.model, items, self.transform(), batch_size, self.device, "val scores",
                                    False, workers)
        except ValueError as e:
            raise ThresholdError(f"{data}: {e}") from None
        ok = valid_rows(z)
        return self.ood_scores(z[ok], f[ok])

    def compute_threshold(self, data: str | Path, tpr: float = DEFAULT_TPR, workers: int = 0) -> dict:
        """Pick the threshold on the val split, write it beside the checkpoint and use it."""
        if not 0 < tpr <= 1:
            raise ThresholdError(f"--tpr must be in (0, 1]; got {tpr}")
        rec = {"model_version": self.version, "model_name": self.name, "score": self.score, "tpr": tpr,
               **ood.threshold_at_tpr(self.val_scores(data, workers), tpr), "data": str(data)}
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
        data = data or self.ckpt.args.get("data")
        if not data or not (Path(data) / "dataset.yaml").is_file():
            raise ThresholdError(
                f"{self.ckpt_path}: no OOD threshold stored for this checkpoint ({f.name}) and its training "
                f"data '{data}' is not here; run 'python -m pipeline threshold --checkpoint "
                f"{self.ckpt_path} --data DATASET' or pass --threshold")
        return self.compute_threshold(data, tpr)["threshold"]

    def rows(self, scores, top_labels, top_p) -> list[dict]:
        """The prediction columns of each image (status ok or ood)."""
        out = []
        for s, names, p in zip(scores.tolist(), top_labels, top_p.tolist()):
            ood = self.threshold is not None and s < self.threshold
            out.append({"model_name": self.name, "model_version": self.version, "ood_score": s,
                        "ood_scorer": self.score, "ood_threshold": self.threshold, "is_ood": ood,
                        "top1_label": names[0], "top1_prob": p[0],
                        "top2_label": names[1] if len(names) > 1 else None,
                        "top2_prob": p[1] if len(p) > 1 else None, "top2_rule": self.top2,
                        "status": "ood" if ood else "ok", "error": None})
        return out

    def error_row(self, message: str) -> dict:
        return {"model_name": self.name, "model_version": self.version, "ood_score": None,
                "ood_scorer": self.score, "ood_threshold": self.threshold, "is_ood": None, "top1_label": None, "top1_prob": None,
                "top2_label": None, "top2_prob": None, "top2_rule": self.top2, "status": "error", "error": message}
