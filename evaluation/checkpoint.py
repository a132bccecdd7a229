"""Every metric of one checkpoint on one dataset (what `evaluate.py run` writes as JSON).

Image sets (each inferred once, see inference.CachedPredictor): the test split with every class
(task models too: one-class recognition and rejection need every class), each task's external
sets (the task's two classes), each OOD set and each multi-label set of the spec.

- RQ1 `tasks.<task>.sets.<set>`: accuracy and macro F1 of the binary task on the set's images of
  the task's two classes, answered by the task's rule (`tasks.<task>.rule_choice`: chosen on val and
  the task's ext_val sets by models/task_rules.py, never on these sets), and under `by_rule.<rule>`
  by every rule the model's head has; under `bn_adapt` the same by the model
  whose BatchNorm statistics were re-estimated on the set's own images (models.adapt; for the test
  split, on all of it). Raw: the per-image (label, answer) of the task's rule, as trained and
  under `bn_adapt`, for paired intervals. `tasks.<task>.validation.<set>`: the same answer on the
  images the rule was chosen on (val, ext_val sets), as trained and, for the one model (whose
  levers evaluation/robustness.py weighs), under `bn_adapt`, with raw outcomes (`validation`, `validation_bn_adapt`): what a default is chosen by.
- RQ2 `tasks.<task>.one_class`: AUROC of the task's positive class against every other test image,
  scored by the class probability (`auroc`) and by its logit (`auroc_logit`).
- RQ2 `rejection.<ood set>.<scorer>`: in-distribution = the whole test split (positive) against the
  OOD set; AUROC, AUPR, FPR at 95% TPR per scorer: every logit scorer of models.scores and every
  feature detector of models.detectors (models.ood.fit_filter: fitted here, in memory, on the
  train split as a release fits them; the train, val and ood_val features come from the same
  cache, so a second evaluation refits without inferring); `paper_scorer` names the paper's
  score, `detectors` the detectors, `default` the scorer chosen on val + ood_val (never on these
  sets) and `selection` the ood_val figures it was chosen by.
- `checkpoint_sha256`: the checkpoint's content hash (a release names its checkpoint by it).
- RQ3 `multilabel.<set>.by_rule.<rule>`: top-2 analysis of `Paradigm.rank_labels` under each rule
  of models.paradigms.RANKINGS, and `test_top2`: per rule the share of test images whose
  label is in the top-2 (what a rule costs on single-label images); a task-centric model answers
  only its own task: share of images it calls positive (the report takes the union over them).
- `calibration`: the model's own decisions on the test split (`Paradigm.decisions`) `before` and
  `after` temperature scaling (models/calibration.py): ECE (15 bins), NLL, Brier, mean confidence;
  `accuracy` (the same for both: a temperature changes no decision), the `temperatures` per head and
  `fitted` (from the checkpoint, or fitted here on the val logits the OOD filter already read when
  the checkpoint has none), `val` (the val figures they were fitted on). The OOD scores use the
  unscaled logits.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.spec import Spec
from evaluation import metrics
from evaluation.inference import CachedPredictor
from models import calibration as calib
from models import checkpoint as checkpoints
from models import ood
from models import task_rules
from models.inference import valid_rows
from models.paradigms import RANKINGS, NoAnswer
from utils import plain, to_numpy


def to_json(metrics: dict) -> str:
    """Strict JSON: NaN (a metric undefined on a set with one class) becomes null."""
    return json.dumps(plain(metrics), indent=2, allow_nan=False) + "\n"


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


def binary_metrics(paradigm, logits, labels, task, rule: str = "argmax", threshold: float = 0.0) -> dict:
    """Accuracy and macro F1 of the task's answer by `rule` (`threshold`: the fitted margin of rule
    `threshold`) on the images of its two classes, every rule under `by_rule`, and `outcome`: per
    image (label, answer), for paired bootstrap intervals (moved to raw by the caller)."""
    out = {"n": sum(c in task for c in labels)}
    for r in paradigm.task_rules(task):  # NoAnswer for a model without a head for the task
        o = task_rules.outcomes(paradigm.output_heads, task, {"": (to_numpy(logits), labels)}, r, threshold).get(
            "", np.zeros((0, 2), int))
        m = {"accuracy": metrics.accuracy(o[:, 0], o[:, 1]), "f1_macro": metrics.macro_f1(o[:, 0], o[:, 1])}
        out.setdefault("by_rule", {})[r] = m
        if r == rule:
            out.update(m)
            out["outcome"] = o
    return out


def evaluate_checkpoint(ckpt_path, spec: Spec, *, device="cpu", batch_size=32, cache_dir=None, progress=True,
                        workers: int = 0, loaded=None) -> tuple[dict, dict]:
    """(metrics as plain data, raw arrays for figures and for combining task models).

    `loaded`: the models.checkpoint.Checkpoint of `ckpt_path` when the caller has it already."""
    ckpt = loaded or checkpoints.load(ckpt_path, spec, device)
    paradigm, model = ckpt.paradigm, ckpt.model
    predictor = CachedPredictor(ckpt, cache_dir, batch_size, device, progress, workers)
    sets = image_sets(spec)

    features = {}  # set name -> features of its readable images

    def run(name, adapt=False):
        logits, feats = predictor(name, sets[name], adapt)
        ok = valid_rows(logits)
        if not adapt:
            features[name] = feats[ok]
        return logits[ok], [c for (_, c), k in zip(sets[name], ok.tolist()) if k]

    out = {**ckpt.provenance(), "checkpoint_sha256": predictor.sha256, "dataset": spec.name, "params": sum(p.numel() for p in model.parameters()),
           "forward_passes_per_image": 1, "tasks": {}, "rejection": {}, "multilabel": {}}
    kept = {}  # val and ext_val outputs, read by the task rules, the OOD filter and calibration (once, cache or not)

    def extract(name, items):
        if name in kept:
            return kept[name]
        outputs = predictor(name, items)
        if name == calib.SPLIT or name.startswith("ext_val/"):
            kept[name] = outputs
        return outputs

    adapted = {}  # BN-adapted outputs of the validation sets (val serves every task: adapted once)

    def extract_adapted(name, items):
        if name not in adapted:
            adapted[name] = predictor(name, items, True)
        return adapted[name]

    rules = task_rules.of_checkpoint(ckpt, spec, extract)
    test_logits, test_labels = run("test")
    raw = {"rejection": {}, "multilabel": {}, "tasks": {}, "bn_adapt": {}, "validation": {}, "validation_bn_adapt": {},
           "test": {"labels": test_labels, "top1": [r[0] for r in paradigm.rank_labels(test_logits)]}}
    for task in paradigm.tasks(spec.tasks):
        out["tasks"][task] = task_entry(paradigm, spec, task, test_logits, test_labels, run, rules.get(task),
                                        raw["tasks"].setdefault(task, {}), raw["bn_adapt"].setdefault(task, {}))
        if task in rules:  # BN adapt here only where the report weighs it as a lever (evaluation/robustness.py)
            adapt = {"bn_adapt": extract_adapted} if paradigm.name == "uni" else {}
            out["tasks"][task]["validation"] = validation_entry(
                ckpt, spec, task, rules[task], {"": extract, **adapt},
                {"": raw["validation"].setdefault(task, {}), "bn_adapt": raw["validation_bn_adapt"].setdefault(task, {})})

    filt, _ = ood.fit_filter(ckpt, spec, extract=extract)

    def scores(logits, name):
        return filt.scores(logits, features[name], paradigm)

    id_scores = scores(test_logits, "test")
    out["rejection"]["paper_scorer"] = paradigm.paper_scorer
    out["rejection"]["detectors"] = list(filt.detectors)
    out["rejection"]["default"] = filt.default
    out["rejection"]["selection"] = filt.selection
    for name in spec.ood:
        logits, _ = run(f"ood/{name}")
        ood_scores = scores(logits, f"ood/{name}")
        y = np.r_[np.ones(len(test_logits), int), np.zeros(len(logits), int)]
        out["rejection"][name] = {s: {**metrics.detection(y, np.r_[id_scores[s].numpy(), ood_scores[s].numpy()]),
                                      "n_id": len(test_logits), "n_ood": len(logits)} for s in id_scores}
        raw["rejection"][name] = {s: (id_scores[s].numpy(), ood_scores[s].numpy()) for s in id_scores}

    if not paradigm.task:  # the cost of a ranking rule on single-label images: is the label in the top-2?
        out["test_top2"] = {r: float(np.mean([y in top for y, top in zip(test_labels, paradigm.top_labels(
            test_logits, 2, r)[0])])) if test_labels else float("nan") for r in RANKINGS}
    for name, mset in spec.multilabel.items():
        logits, _ = run(f"multilabel/{name}")
        out["multilabel"][name], raw["multilabel"][name] = multilabel_entry(paradigm, spec, logits, list(mset.labels))

    out["calibration"], raw["calibration"] = calibration_entry(ckpt, spec, test_logits, test_labels, extract)
    out["inferred_sets"] = list(predictor.inferred)
    return out, raw


def calibration_entry(ckpt, spec: Spec, test_logits, test_labels, extract) -> tuple[dict, dict]:
    """Test-split calibration before and after the checkpoint's temperatures (module doc); `extract`
    gives the val outputs the OOD filter read (read only when the checkpoint has no calibration)."""
    record, fitted = calib.of_checkpoint(ckpt, lambda: calib.val_outputs(ckpt, spec, extract))
    temps = calib.temperatures(record, ckpt.paradigm)
    before, raw_before = calib.figures(ckpt.paradigm, test_logits, test_labels)
    after, raw_after = calib.figures(ckpt.paradigm, test_logits, test_labels, temps)
    shared = ("accuracy", "n_decisions")
    entry = {**{k: before[k] for k in shared}, "before": {k: v for k, v in before.items() if k not in shared},
             "after": {k: v for k, v in after.items() if k not in shared}, "temperatures": record["temperatures"],
             "fitted": fitted, "method": record["method"], "val": record["val"]}
    return entry, {"before": raw_before, "after": raw_after}


def task_entry(paradigm, spec: Spec, task: str, test_logits, test_labels, run, choice: dict | None, raw: dict,
               raw_adapted: dict) -> dict:
    """RQ1 on the test split and the task's external sets by the task's rule (`choice`, models/
    task_rules.py), RQ2 one-class recognition; `raw[set]` and `raw_adapted[set]` get the per-image
    (label, answer), as trained and with BatchNorm adapted to the set."""
    pair = spec.tasks[task]
    entry = {"classes": list(pair), "sets": {}}
    try:
        rule = (choice["rule"], choice.get("threshold", 0.0)) if choice else ("argmax", 0.0)
        if choice:
            entry["rule_choice"] = choice
        entry["sets"]["test"] = binary_metrics(paradigm, test_logits, test_labels, pair, *rule)
        for name in spec.external.get(task, {}):
            logits, labels = run(f"ext/{task}/{name}")
            entry["sets"][name] = binary_metrics(paradigm, logits, labels, pair, *rule)
        for name, m in entry["sets"].items():
            raw[name] = m.pop("outcome")
            m["bn_adapt"] = adapted_metrics(paradigm, pair, run, "test" if name == "test" else f"ext/{task}/{name}",
                                            rule)
            if "outcome" in m["bn_adapt"]:
                raw_adapted[name] = m["bn_adapt"].pop("outcome")
        prob, logit = paradigm.class_score(test_logits, pair[1])
        y = np.array([c == pair[1] for c in test_labels], dtype=int)
        entry["one_class"] = {"auroc": metrics.auroc(y, prob.numpy()), "auroc_logit": metrics.auroc(y, logit.numpy()),
                              "n_positive": int(y.sum()), "n": len(y)}
    except NoAnswer as e:
        entry["missing"] = str(e)
    return entry


def validation_entry(ckpt, spec: Spec, task: str, choice: dict, extracts: dict, raws: dict) -> dict:
    """The task's answer by its rule (`choice`, models/task_rules.py's record) on the images it was chosen on (val, the task's ext_val sets;
    models/task_rules.py), as trained ('') and with BatchNorm adapted to each set ('bn_adapt'):
    {set: {accuracy, n, bn_adapt: {accuracy, n} or {missing}}}; `raws[key][set]` gets the
    per-image (label, answer), so that a default is chosen from paired intervals on them alone."""
    items = task_rules.validation_items(ckpt, spec, task)
    entry = {}
    for key, extract in extracts.items():
        try:
            found = task_rules.outcomes(ckpt.paradigm.output_heads, spec.tasks[task],
                                        task_rules.validation_sets(items, extract), choice["rule"],
                                        choice["threshold"])
        except ValueError as e:  # a set too small to adapt on
            for name in items:
                entry.setdefault(name, {})[key] = {"missing": str(e)}
            continue
        for name, o in found.items():
            m = {"accuracy": metrics.accuracy(o[:, 0], o[:, 1]), "n": len(o)}
            if key:
                entry.setdefault(name, {})[key] = m
            else:
                entry.setdefault(name, {}).update(m)
            raws[key][name] = o
    return entry


def adapted_metrics(paradigm, pair, run, set_name: str, rule: tuple[str, float]) -> dict:
    """`binary_metrics` by the model whose BatchNorm statistics were re-estimated on the set's images
    (models.adapt); {"missing": why} when the set cannot be adapted on."""
    try:
        logits, labels = run(set_name, adapt=True)
    except ValueError as e:
        return {"missing": str(e)}
    return binary_metrics(paradigm, logits, labels, pair, *rule)


def multilabel_entry(paradigm, spec: Spec, logits, labels: list[str]) -> tuple[dict, dict]:
    """RQ3: top-2 of the label ranking; a task-centric model answers its own task only."""
    if paradigm.task:
        pos = spec.tasks[paradigm.task][1]
        flags = paradigm.task_positive(logits, spec.tasks[paradigm.task]).tolist()
        return ({"n": len(flags), "labels": labels, "rule": "task model says positive",
                 "found": {pos: sum(flags) / max(len(flags), 1)}}, {pos: flags})
    ranked = {rule: paradigm.rank_labels(logits, rule) for rule in RANKINGS}
    return ({"labels": labels, "rule": "top-2 of rank_labels, per ranking rule",
             "by_rule": {r: metrics.topk_analysis(ranked[r], labels, k=2) for r in RANKINGS}}, {"by_rule": ranked})
