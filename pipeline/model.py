"""The deployed model: a release bundle (pipeline/bundle.py) on ONNX Runtime, numpy around it, no torch.

`Predictor.load(BUNDLE)` verifies the bundle (every file's sha256 and the id), opens its graph in
ONNX Runtime and serves it: decode, resize, crop and normalise (pipeline/pixels.py), one forward
pass for the logits and the hidden features, the OOD score and the top-2 from them
(pipeline/outputs.py, the same code evaluation uses through models/). Nothing is fitted and no
dataset is read: the detectors' arrays, the default scorer and every scorer's threshold (chosen on
val at the release's TPR) come from the bundle. The bundle id is the `model_version` of every row.

- OOD score: the bundle's default scorer (chosen on val + ood_val at release) unless `score`
  names another; its threshold is the bundle's for that scorer unless `threshold` overrides it.
- Top-2: the paradigm's label ranking under the `top2` rule: coherent by default (a label that the
  top-1 excludes, its task's other class, is skipped, so the second label can be true beside the
  first; REPORT.md Table 5 measures both rules), or plain.
- Scores: the top-2 probabilities after the bundle's temperature scaling (bundle.json
  `calibration`, fitted on val; pipeline/outputs.py applies it), which changes no label and no OOD
  score; a bundle released before calibration existed serves its probabilities as trained.
- Task answers: for each binary task in bundle.json `tasks` (models/task_rules.py chose its rule on
  validation images at release), the class the model answers, by that rule (and its fitted
  threshold) from the unscaled logits (`Heads.task_positive`), so a row says what the evaluation report measured; written for
  ok and ood rows as compact JSON `{"defect":"defect","dirt":"normal"}` (sorted keys,
  `pipeline.table.answers_text`). A bundle released before `tasks` existed answers none (NULL).
Each row records the scorer, threshold, top-2 rule and calibration (`calibration_name`) that produced it.

`bundle_for(CKPT)` is the training environment's shortcut (`--checkpoint`): the bundle released
from that checkpoint's content, from a cache folder or released into it now (models.release, which
needs torch and the training data).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.bundle import MANIFEST, Bundle, BundleError
from pipeline.outputs import RANKINGS, SCORER_NAMES, TASK_RULES, Heads, calibration_name, ood_score
from pipeline.pixels import Pixels
from pipeline.table import answers_text

DEFAULT_TPR = 0.95
DEFAULT_TOP2 = "coherent"  # measured against plain in REPORT.md Table 5 (docs/evaluation.md: the top-2 rule)
DEVICES = ("auto", "cpu", "cuda")


class ServingError(ValueError):
    """A model that cannot be served as asked (bad flag, missing execution provider); one line."""


def onnx_session(model_file: Path, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session on `model_file`: `threads` intra-op threads (None: ONNX Runtime's
    default, every core), on the CUDA execution provider for device cuda (auto: when installed)."""
    import onnxruntime as ort
    if device not in DEVICES:
        raise ServingError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not cuda:
        raise ServingError("--device cuda needs ONNX Runtime's CUDA execution provider (pip install "
                           "onnxruntime-gpu with a visible GPU); this one has only the CPU: use --device cpu")
    providers = (["CUDAExecutionProvider"] if device != "cpu" and cuda else []) + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(model_file), opts, providers=providers)
    except Exception as e:  # a graph ONNX Runtime refuses (hash verified: an exporter/runtime mismatch)
        raise BundleError(f"{model_file}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None


@dataclass
class Predictor:
    bundle: Bundle
    session: object  # onnxruntime.InferenceSession: images -> (logits, features)
    score: str
    threshold: float
    top2: str = DEFAULT_TOP2
    heads: Heads = field(init=False)
    pixels: Pixels = field(init=False)
    detectors: dict = field(init=False)
    temperatures: tuple | None = field(init=False)  # one per head (bundle.json `calibration`), or None
    calibration: str = field(init=False)  # what rows record of it (`calibration_name`)
    tasks: dict = field(init=False)  # {task: ((negative, positive), rule)} of bundle.json `tasks`; {} without

    def __post_init__(self):
        m = self.bundle.manifest
        self.heads = Heads.from_manifest(m)
        calibration = m.get("calibration")
        self.temperatures = self.heads.ordered(calibration["temperatures"]) if calibration else None
        self.calibration = calibration_name(calibration)
        self.tasks = task_rules_of(self.heads, m.get("tasks"))
        self.pixels = Pixels.from_manifest(m)
        self.detectors = {name: self.bundle.detector(name) for name in m["ood"]["detectors"]}

    @classmethod
    def load(cls, path: str | Path, score: str | None = None, threshold: float | None = None,
             top2: str = DEFAULT_TOP2, device: str = "auto", threads: int | None = None) -> "Predictor":
        """Serve the bundle in folder `path` (module doc); BundleError or ServingError in one line."""
        if top2 not in RANKINGS:
            raise ServingError(f"unknown top-2 rule '{top2}'; choose one of {', '.join(RANKINGS)}")
        if score is not None and score not in SCORER_NAMES:
            raise ServingError(f"unknown OOD score '{score}'; choose one of {', '.join(SCORER_NAMES)}")
        if threshold is not None and not math.isfinite(threshold):
            raise ServingError(f"--threshold must be a finite number; got {threshold}")
        bundle = Bundle.load(path)
        score = score or bundle.default_scorer
        if threshold is None:
            try:
                threshold = bundle.threshold(score)
            except KeyError:
                raise BundleError(f"{path}: holds no threshold for the OOD score '{score}'") from None
        session = onnx_session(bundle.model_file, threads, device)
        try:
            return cls(bundle, session, score, float(threshold), top2)
        except (KeyError, TypeError, ValueError) as e:  # a manifest this reader cannot serve
            raise BundleError(f"{bundle.path / MANIFEST}: cannot be served ({type(e).__name__}: {e})") from None

    @property
    def name(self) -> str:
        return self.bundle.manifest["name"]

    @property
    def version(self) -> str:
        return self.bundle.id

    @property
    def classes(self) -> list[str]:
        """The labels this model can write into the table."""
        return self.heads.labels

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, hidden features) of one forward pass over a batch of `pixels` images (uint8
        (N, 3, crop, crop)) or of already normalised float32 ones."""
        if x.dtype == np.uint8:
            x = self.pixels.normalize(x)
        logits, features = self.session.run(["logits", "features"], {"images": np.ascontiguousarray(x)})
        return logits, features

    def ood_scores(self, logits: np.ndarray, features: np.ndarray) -> np.ndarray:
        return ood_score(self.score, logits, features, self.heads, self.detectors)

    def task_answers(self, logits: np.ndarray) -> list[str | None]:
        """Per image, the class it answers for each of the bundle's tasks by the task's rule, from
        the unscaled logits, as the compact JSON the table stores (module doc); None per image for
        a bundle without tasks."""
        if not self.tasks:
            return [None] * len(logits)
        said = {t: np.where(self.heads.task_positive(logits, pair, rule, threshold), pair[1], pair[0]).tolist()
                for t, (pair, rule, threshold) in self.tasks.items()}
        return [answers_text({t: said[t][i] for t in said}) for i in range(len(logits))]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, list[list[str]], np.ndarray, list[str | None]]:
        """(OOD scores, top-2 labels, their scores, task answers) for a batch of images."""
        z, f = self.forward(x)
        labels, top = self.heads.top_labels(z, 2, self.top2, self.temperatures)
        return self.ood_scores(z, f), labels, top, self.task_answers(z)

    def rows(self, scores, top_labels, top_p, task_answers) -> list[dict]:
        """The prediction columns of each image (status ok or ood): `outputs`' four answers."""
        out = []
        for s, names, p, answers in zip(np.asarray(scores).tolist(), top_labels, np.asarray(top_p).tolist(),
                                        task_answers, strict=True):
            ood = s < self.threshold
            out.append({**self._columns(), "ood_score": s, "is_ood": ood, "top1_label": names[0], "top1_prob": p[0],
                        "top2_label": names[1] if len(names) > 1 else None,
                        "top2_prob": p[1] if len(p) > 1 else None, "task_answers": answers,
                        "status": "ood" if ood else "ok", "error": None})
        return out

    def error_row(self, message: str) -> dict:
        return {**self._columns(), "ood_score": None, "is_ood": None, "top1_label": None, "top1_prob": None,
                "top2_label": None, "top2_prob": None, "task_answers": None, "status": "error", "error": message}

    def _columns(self) -> dict:
        return {"model_name": self.name, "model_version": self.version, "ood_scorer": self.score,
                "ood_threshold": self.threshold, "top2_rule": self.top2, "calibration": self.calibration}


def task_rules_of(heads: Heads, records: dict | None) -> dict:
    """{task: ((negative, positive), rule, threshold)} of bundle.json `tasks` (models/task_rules.py's
    records; None for a bundle released before them: {}); ValueError for a record these heads cannot
    answer."""
    out = {}
    for task, record in (records or {}).items():
        pair, rule, threshold = tuple(record["classes"]), record["rule"], record.get("threshold", 0.0)
        if len(pair) != 2 or rule not in TASK_RULES or heads.task_head(pair) is None:
            raise ValueError(f"task '{task}': classes {list(pair)} with rule '{rule}' is not a binary task these "
                             f"heads answer by one of {', '.join(TASK_RULES)}")
        if not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
            raise ValueError(f"task '{task}': threshold {threshold!r} is not a finite number")
        out[task] = (pair, rule, float(threshold))
    return out


# --- a checkpoint's bundle (the training environment's shortcut) ------------------------------

def released(cache: Path, ckpt_sha256: str, tpr: float = DEFAULT_TPR) -> Path | None:
    """The bundle in `cache` released from the checkpoint with this content hash at this TPR."""
    for manifest in sorted(cache.glob(f"*/{MANIFEST}")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if m.get("provenance", {}).get("checkpoint_sha256") == ckpt_sha256 and m.get("ood", {}).get("tpr") == tpr:
            return manifest.parent
    return None


def bundle_for(checkpoint: str | Path, cache: str | Path | None = None, data: str | Path | None = None,
               tpr: float = DEFAULT_TPR) -> Path:
    """The bundle of a train.py checkpoint (module doc). `cache`: a folder of bundles (default
    PIPELINE_BUNDLES, else `bundles/` beside the checkpoint); `data`: the dataset release fits the
    OOD filter on (default: the checkpoint's)."""
    from data.images import ImageError, content_hash
    checkpoint = Path(checkpoint)
    cache = Path(cache or os.environ.get("PIPELINE_BUNDLES") or checkpoint.parent / "bundles")
    try:
        found = released(cache, content_hash(checkpoint), tpr)
    except (ImageError, OSError) as e:
        raise ServingError(f"{checkpoint}: cannot read the checkpoint ({e})") from None
    if found:
        return found
    try:
        from models.release import release
    except ImportError as e:
        raise ServingError(f"--checkpoint releases a bundle first, which needs the training environment ({e}); "
                           f"serve a released bundle with --bundle DIR (python -m models.release)") from None
    return release(checkpoint, data, cache, tpr)[0]
