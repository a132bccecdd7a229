"""Serving cost of each system, timed in interleaved repeats on the same images: REPORT.md's
Table 7 (`table7`) and the timings claim C6 judges (`timings`).

A system is the set of models needed to answer every task of the spec: efficiency-centric = the
one uni model, multi-task = the one multi model, task-centric = one model per task. Per system:
number of models, forward passes per image (= models), parameters (summed), and the wall-clock
milliseconds per image to run every model of the system over the same preloaded images (batched).

Timing protocol: one untimed warm-up round of every system, then `repeats` rounds; in each round
every system is timed once, in an order rotated by one place per round, so that a load that comes
and goes (another job on the cores) falls on every system alike. Two systems timed in the same
round form a pair: their per-round ratio is what claim C6 judges (evaluation.claims), with an
order-statistic interval of the median over the rounds (evaluation.stats.median_interval).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from data.images import load_rgb
from data.loading import eval_transform
from data.spec import Spec
from evaluation.stats import median_interval
from evaluation.tables import ReportTable
from models.paradigms import TITLES, build_paradigm

UNI, MULTI, TASK = TITLES["uni"], TITLES["multi"], TITLES["task"]
REPEATS = 9  # the fewest rounds whose 95 % median interval leaves out the lowest and the highest
# One thread on the CPU: the time is then the models' compute, shared fairly by the scheduler when other
# processes want the cores; several threads wait on each other at every layer once one of them is
# descheduled, which made the timing of the same model vary tenfold under load.
THREADS = 1


def _batches(x: torch.Tensor, batch_size: int):
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def _sync(device) -> None:
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def round_orders(names: list[str], repeats: int) -> list[list[str]]:
    """The order of the systems in each timed round: `names` rotated by one place per round."""
    k = max(len(names), 1)
    return [names[r % k:] + names[:r % k] for r in range(repeats)]


def measure(systems: dict[str, list], paths: list, batch_size: int = 16, device="cpu",
            repeats: int = REPEATS, threads: int | None = THREADS) -> dict:
    """`systems`: name -> list of (model, (resize, crop)). Returns name -> {models,
    forward_passes_per_image, params, images, ms_per_image_repeats (one per round, in round order),
    ms_per_image (their median)}. On the CPU the models run on `threads` torch threads (None: torch's
    setting)."""
    before = torch.get_num_threads()
    if threads and not str(device).startswith("cuda"):
        torch.set_num_threads(threads)
    try:
        return _measure(systems, paths, batch_size, device, repeats)
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def _measure(systems, paths, batch_size, device, repeats) -> dict:
    tensors: dict[tuple[int, int], torch.Tensor] = {}
    for models in systems.values():
        for _, size in models:
            if size not in tensors:
                tf = eval_transform(*size)
                tensors[size] = torch.stack([tf(load_rgb(p)) for p in paths]).to(device)

    def run(models) -> float:
        _sync(device)
        start = time.perf_counter()
        for model, size in models:
            for b in _batches(tensors[size], batch_size):
                model(b)
        _sync(device)
        return time.perf_counter() - start

    for models in systems.values():
        for model, _ in models:
            model.eval()
        run(models)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    for order in round_orders(list(systems), repeats):
        for name in order:
            seconds[name].append(run(systems[name]))
    n = max(len(paths), 1)
    out = {}
    for name, models in systems.items():
        ms = [1000 * s / n for s in seconds[name]]
        out[name] = {"models": len(models), "forward_passes_per_image": len(models),
                     "params": sum(sum(p.numel() for p in m.parameters()) for m, _ in models),
                     "images": len(paths), "ms_per_image_repeats": ms,
                     "ms_per_image": float(np.median(ms)) if ms else float("nan")}
    return out


MS, MS_LO, MS_HI, ROUNDS = ("ms per image (median)", "ms 95 % low", "ms 95 % high", "timed rounds")
MS_ROUNDS = "ms per image per round"  # a cell of every row, not a column: the per-round timings C6 pairs


def table7(first_models, spec: Spec, device, n_images: int, batch_size: int,
                       repeats: int = REPEATS):
    """Table 7 as ("table7_efficiency", table): each system (the first trial of each run) timed over
    the same test images in `repeats` interleaved rounds (evaluation.efficiency); per system the
    median ms per image with its 95 % order-statistic interval. Each row also carries the per-round
    timings under MS_ROUNDS (not shown) for claim C6 (`timings`)."""
    systems = {}
    if "uni" in first_models:
        systems[UNI] = [first_models["uni"]]
    if "multi" in first_models:
        systems[MULTI] = [first_models["multi"]]
    task_models = [build_paradigm("task", spec, t).run_name for t in spec.tasks]
    if spec.tasks and all(r in first_models for r in task_models):
        systems[f"{TASK} ({len(task_models)} models)"] = [first_models[r] for r in task_models]
    if not systems:
        return None
    samples = spec.split_samples("test")
    step = max(1, len(samples) // max(n_images, 1))
    paths = [p for p, _ in samples[::step][:n_images]]
    measured = measure({k: [(ck.model, (ck.resize, ck.crop)) for ck in v] for k, v in systems.items()},
                                  paths, batch_size=min(batch_size, 16), device=device, repeats=repeats)
    columns = ["models", "forward passes per image", "parameters (M)", MS, MS_LO, MS_HI, ROUNDS]
    table = ReportTable("Table 7: efficiency — serving every task", columns,
                        lower_is_better={"models", "forward passes per image", "parameters (M)", MS},
                        no_bold={MS_LO, MS_HI, ROUNDS},
                        column_digits={"models": 0, "forward passes per image": 0, "parameters (M)": 2,
                                       MS: 2, MS_LO: 2, MS_HI: 2, ROUNDS: 0},
                        note=f"Timed on the same {len(paths)} test images on {device} (batch {min(batch_size, 16)}"
                             + ("" if str(device).startswith("cuda") else
                                f", {THREADS} torch thread: the models' compute, which the scheduler "
                                f"shares fairly with other jobs") + "), "
                             f"first trial of each run: one untimed warm-up round of every system, then {repeats} "
                             f"rounds in which every system runs once, in an order rotated each round so that "
                             f"other load on the machine falls on all alike. Median over the rounds, with the "
                             f"order statistics that cover the median with 95 % (scipy.stats.quantile_test; none "
                             f"below 6 rounds). Tasks served: {', '.join(spec.tasks)}.")
    for name, m in measured.items():
        ms = median_interval(m["ms_per_image_repeats"])
        table.add(name, {"models": [m["models"]], "forward passes per image": [m["forward_passes_per_image"]],
                         "parameters (M)": [m["params"] / 1e6], MS: [ms["value"]], MS_LO: [ms["lo"]],
                         MS_HI: [ms["hi"]], ROUNDS: [ms["n"]], MS_ROUNDS: m["ms_per_image_repeats"]})
    return ("table7_efficiency", table)


def timings(eff) -> dict:
    """{'uni': per-round ms, 'task': per-round ms} of Table 7 (None where the system was not timed)."""
    rows = dict(eff[1].rows)
    return {"uni": rows.get(UNI, {}).get(MS_ROUNDS),
            "task": next((cells[MS_ROUNDS] for name, cells in rows.items() if name.startswith(TASK)), None)}
