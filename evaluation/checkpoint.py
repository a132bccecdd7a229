"""Every metric of one checkpoint on one dataset (what `evaluate.py run` writes as JSON).

Image sets (each inferred once, see inference.CachedPredictor): the test split with every class
(task models too: one-class recognition and rejection need every class), each task's external
sets (the task's two classes), each OOD set and each multi-label set of the spec.

- RQ1 `tasks.<task>.sets.<set>`: accuracy and macro F1 of the binary task on the set's images of
  the task's two classes (rules in evaluation.tasks); uni also under `restricted`.
- RQ2 `tasks.<task>.one_class`: AUROC of the task's positive class against every other test image,
  scored by the class probability (`auroc`) and by its logit (`auroc_logit`).
- RQ2 `rejection.<ood set>.<scorer>`: in-distribution = the whole test split (positive) against the
  OOD set; AUROC, AUPR, FPR at 95% TPR per scorer; `paper_scorer` names the paper's score.
- RQ3 `multilabel.<set>`: uni/multi: top-2 analysis of `rank_labels`; task: share of images its
  model calls positive (the report takes the union over the task models).
- `calibration`: ECE (15 bins) of the model's own decisions on the test split (tasks.decisions).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from data.spec import Spec
from evaluation import metrics, scores
from evaluation.inference import CachedPredictor, load_model, valid_rows
from evaluation.tasks import NoAnswer, class_score, decisions, rank_labels, task_positive


def to_json(metrics: dict) -> str:
    """Strict JSON: NaN (a metric undefined on a set with one class) becomes null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return None if isinstance(v, float) and v != v else v
    return json.dumps(clean(metrics), indent=2, default=str, allow_nan=False) + "\n"


def image_sets(spec: Spec) -> dict[str, list[tuple[Path, str | None]]]:
    """name -> (path, class or None) items; names: test, ext/<task>/<set>, ood/<set>, multilabel/<set>."""
    sets = {"test": spec.split_samples("test")}
    for task, suite in spec.external.items():
        for name, folder in suite.items():
            sets[f"ext/{task}/{name}"] = spec.samples(folder, list(spec.tasks[task]))
    for name, folder in spec.ood.items():
        sets[f"ood/{name}"] = [(p, None) for p in spec.flat_images(folder)]
    for name, m in spec.multilabel.items():
        sets[f"multilabel/{name}"] = [(p, None) for p in spec.flat_images(m.path)]
    return sets


def tasks_of(paradigm, spec: Spec) -> list[str]:
    return [paradigm.task] if paradigm.name == "task" else list(spec.tasks)


def binary_metrics(paradigm, logits, labels, task) -> dict:
    neg, pos = task
    keep = torch.tensor([c in (neg, pos) for c in labels], dtype=torch.bool)
    y = np.array([c == pos for c, k in zip(labels, keep) if k], dtype=int)
    out = {"n": int(keep.sum())}
    for key, restricted in ([("", False), ("restricted", True)] if paradigm.name == "uni" else [("", False)]):
        pred = task_positive(paradigm, logits[keep], task, restricted).long().numpy()
        m = {"accuracy": metrics.accuracy(y, pred), "f1_macro": metrics.macro_f1(y, pred)}
        if key:
            out[key] = m
        else:
            out.update(m)
    return out


def evaluate_checkpoint(ckpt_path, spec: Spec, *, device="cpu", batch_size=32, cache_dir=None, progress=True,
                        workers: int = 0, model_bundle=None) -> tuple[dict, dict]:
    """(metrics as plain data, raw arrays for figures and for combining task models)."""
    model, paradigm, ckpt = model_bundle or load_model(ckpt_path, spec, device)
    args = ckpt["args"]
    predictor = CachedPredictor(model, ckpt_path, args["crop"], cache_dir, batch_size, device, progress, workers)
    sets = image_sets(spec)

    def run(name):
        logits = predictor(name, sets[name])
        ok = valid_rows(logits)
        return logits[ok], [c for (_, c), k in zip(sets[name], ok.tolist()) if k]

    out = {"checkpoint": str(ckpt_path), "dataset": spec.name, "run": paradigm.run_name, "paradigm": paradigm.name,
           "task": paradigm.task, "epoch": ckpt.get("epoch"), "profile": args.get("profile"),
           "backbone": args.get("backbone"), "crop": args.get("crop"), "epochs": args.get("epochs"),
           "seed": args.get("seed"), "trial": args.get("trial"),
           "params": sum(p.numel() for p in model.parameters()), "forward_passes_per_image": 1,
           "tasks": {}, "rejection": {}, "multilabel": {}}
    raw = {"rejection": {}, "multilabel": {}}
    test_logits, test_labels = run("test")

    for task in tasks_of(paradigm, spec):
        pair = spec.tasks[task]
        entry = out["tasks"][task] = {"classes": list(pair), "sets": {}}
        try:
            entry["sets"]["test"] = binary_metrics(paradigm, test_logits, test_labels, pair)
            for name in spec.external.get(task, {}):
                logits, labels = run(f"ext/{task}/{name}")
                entry["sets"][name] = binary_metrics(paradigm, logits, labels, pair)
            prob, logit = class_score(paradigm, test_logits, pair[1])
            y = np.array([c == pair[1] for c in test_labels], dtype=int)
            entry["one_class"] = {"auroc": metrics.auroc(y, prob.numpy()), "auroc_logit": metrics.auroc(y, logit.numpy()),
                                  "n_positive": int(y.sum()), "n": len(y)}
        except NoAnswer as e:
            entry["missing"] = str(e)

    id_scores = scores.all_scores(test_logits, paradigm.heads)
    out["rejection"]["paper_scorer"] = scores.paper_scorer(paradigm.name)
    for name in spec.ood:
        logits, _ = run(f"ood/{name}")
        ood_scores = scores.all_scores(logits, paradigm.heads)
        y = np.r_[np.ones(len(test_logits), int), np.zeros(len(logits), int)]
        out["rejection"][name] = {s: {**metrics.detection(y, np.r_[id_scores[s].numpy(), ood_scores[s].numpy()]),
                                      "n_id": len(test_logits), "n_ood": len(logits)} for s in id_scores}
        raw["rejection"][name] = {s: (id_scores[s].numpy(), ood_scores[s].numpy()) for s in id_scores}

    for name, mset in spec.multilabel.items():
        logits, _ = run(f"multilabel/{name}")
        labels = list(mset.labels)
        if paradigm.name == "task":
            pos = paradigm.classes[1]
            flags = task_positive(paradigm, logits, spec.tasks[paradigm.task]).tolist()
            out["multilabel"][name] = {"n": len(flags), "labels": labels, "rule": "task model says positive",
                                       "found": {pos: sum(flags) / max(len(flags), 1)}}
            raw["multilabel"][name] = {pos: flags}
        else:
            ranked = rank_labels(paradigm, logits)
            res = metrics.topk_analysis(ranked, labels, k=2)
            out["multilabel"][name] = {"labels": labels, "rule": "top-2 of rank_labels", **res}
            raw["multilabel"][name] = {"ranked": ranked}

    conf, correct = decisions(paradigm, test_logits, test_labels)
    out["calibration"] = {"ece": metrics.ece(conf.numpy(), correct.numpy(), 15), "n_decisions": len(conf),
                          "accuracy": float(correct.float().mean()) if len(correct) else float("nan"),
                          "mean_confidence": float(conf.mean()) if len(conf) else float("nan")}
    raw["calibration"] = (conf.numpy(), correct.numpy())
    out["inferred_sets"] = list(predictor.inferred)
    return out, raw
