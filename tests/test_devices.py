"""Training and serving on each device: the AMP step, channels_last, checkpoints moving between
devices, and `pipeline predict` on a GPU.

Every test runs on the CPU here (AMP there is bf16) and again on CUDA where a GPU is (fp16 with a
GradScaler): those are marked `cuda` and skipped without one. `bench/bench_gpu.py` runs them
(`pytest -m cuda`) on a lent GPU machine; docs/performance.md, "The GPU profile", gives what they
gave."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from engine import pmg_step
from models import build_model, build_paradigm
from tests.builders import toy_spec, write_images
from tests.conftest import TINY_TRAIN, run_cli
from tests.test_pipeline_support import by_path, pipeline_cli

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")])
DEVICES = ["cpu", CUDA]
SMALL = dict(branch_mid=16, branch_out=32, hidden=16)


def tiny(device: str):
    paradigm = build_paradigm("uni", toy_spec())
    torch.manual_seed(0)
    model = build_model("resnet18", paradigm, "none", **SMALL).to(device)
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.arange(8).remainder(len(paradigm.classes)).unsqueeze(1).to(device)
    return paradigm, model, x, y


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_an_amp_step_stays_finite_and_near_fp32(device):
    """fp16 with a GradScaler on CUDA (its first steps may be skipped while the scale settles), bf16
    on the CPU: the losses of the first batch are fp32's within the low precision's tolerance, and
    after three batches the weights have moved and are finite."""
    paradigm, model, x, y = tiny(device)
    fp32 = pmg_step(copy.deepcopy(model), paradigm, x, y, sgd(model), torch.Generator().manual_seed(0))
    amp = copy.deepcopy(model)
    opt = sgd(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=device == "cuda")
    gen = torch.Generator().manual_seed(0)
    dtypes = set()
    stem = next(m for m in amp.modules() if isinstance(m, torch.nn.Conv2d))
    stem.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    losses = [pmg_step(amp, paradigm, x, y, opt, gen, scaler=scaler, amp=True) for _ in range(3)]
    assert dtypes == {torch.float16 if device == "cuda" else torch.bfloat16}  # it did run in low precision
    assert all(torch.isfinite(torch.tensor(b)).all() for b in losses)
    # The first pass of the first batch runs before any update: the same loss up to rounding.
    assert losses[0][0] == pytest.approx(fp32[0], rel=2e-2)
    moved = [not torch.equal(a, b) for a, b in zip(amp.parameters(), model.parameters())]
    assert sum(moved) > len(moved) // 2
    assert all(torch.isfinite(p).all() for p in amp.parameters())
    if scaler.is_enabled():
        assert 0 < scaler.get_scale() < float("inf")


class Recorder(torch.optim.SGD):
    """SGD at lr 0 that keeps the gradient of every optimizer step (each of PMG's four passes)."""

    def __init__(self, params):
        self.params = list(params)
        super().__init__(self.params, lr=0.0)
        self.grads = []

    def step(self, closure=None):
        self.grads.append(torch.cat([p.grad.flatten().double() for p in self.params if p.grad is not None]))
        return super().step(closure)


@pytest.mark.parametrize("device", DEVICES)
def test_a_channels_last_step_computes_what_the_nchw_step_does(device):
    """The layout the paper profile trains in changes the speed, not the math: the same four losses
    (jigsaw included) and, pass by pass, the same gradients. Gradients of a freshly initialised
    network with BatchNorm over 8 images are ill-conditioned: measured against float64, NCHW's fp32
    ones were off by up to 4e-3 and channels_last's by up to 1.1e-2 (relative norm, CPU), so they
    are compared at 5e-2; a layout bug (a view of the wrong memory order) is off by O(1)."""
    paradigm, model, x, y = tiny(device)
    nchw, nhwc = copy.deepcopy(model), copy.deepcopy(model).to(memory_format=torch.channels_last)
    a, b = Recorder(nchw.parameters()), Recorder(nhwc.parameters())
    la = pmg_step(nchw, paradigm, x, y, a, torch.Generator().manual_seed(0))
    lb = pmg_step(nhwc, paradigm, x.contiguous(memory_format=torch.channels_last), y, b,
                  torch.Generator().manual_seed(0))
    assert lb == pytest.approx(la, rel=1e-5 if device == "cpu" else 5e-3)
    assert len(a.grads) == len(b.grads) == 4
    for k, (ga, gb) in enumerate(zip(a.grads, b.grads)):
        assert (ga - gb).norm() / ga.norm() < 5e-2, f"pass {k}"
    conv = next(p for p in nhwc.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the step kept the layout


def train(data, out, device: str, epochs: int, *extra):
    return run_cli("train.py", "--data", data, "--paradigm", "uni", "--epochs", epochs, "--artifacts", out,
                   *TINY_TRAIN, "--device", device, "--amp", *extra)  # the last --device wins


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_trained_with_amp_on_one_device_serves_and_resumes_on_every_device(device, tiny_data,
                                                                                          tmp_path):
    """Trained with AMP on `device`, the checkpoint loads on the CPU and on `device` with its weights
    there and the same predictions, and its run resumes on the other device (CUDA: a GPU run goes on
    on the CPU and a CPU run on the GPU, optimizer and GradScaler state included)."""
    from data.images import load_rgb
    from data.spec import load_spec
    from models import checkpoint as checkpoints
    proc = train(tiny_data, tmp_path, device, 1)
    assert ("peak GPU memory" in proc.stdout) == (device == "cuda")
    best = tmp_path / "uni" / "exp1" / "best.pt"
    loaded = {d: checkpoints.load(best, device=d) for d in {"cpu", device}}
    for d, ckpt in loaded.items():
        assert {p.device.type for p in ckpt.model.parameters()} == {d}
    files = [p for p, _ in load_spec(tiny_data).split_samples("test")[:16]]
    x = torch.stack([loaded["cpu"].transform()(load_rgb(f)) for f in files])
    with torch.no_grad():
        logits = {d: ckpt.model(x.to(d))[0].float().cpu() for d, ckpt in loaded.items()}
    torch.testing.assert_close(logits[device], logits["cpu"], rtol=1e-3, atol=1e-3)

    other = "cpu" if device == "cuda" else ("cuda" if HAS_CUDA else "cpu")
    proc = train(tiny_data, tmp_path, other, 2, "--resume")
    assert f"resumed from {tmp_path / 'uni' / 'exp1' / 'last.pt'} at epoch 1" in proc.stdout
    state = torch.load(tmp_path / "uni" / "exp1" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def ort_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.cuda
@pytest.mark.skipif(not (HAS_CUDA and ort_cuda()), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_pipeline_predict_on_cuda_writes_the_rows_of_the_cpu(bundles, tmp_path):
    """The same images through `pipeline predict --device cuda` and `--device cpu`: the same top-2
    labels in one row per image, probabilities within 1e-3 (the threshold is the bundle's)."""
    write_images(tmp_path / "src", 40)
    from pipeline.table import PredictionTable
    rows = {}
    for d in ("cpu", "cuda"):
        db = tmp_path / f"{d}.db"
        proc = pipeline_cli("predict", "--bundle", bundles["uni"], "--source", tmp_path / "src", "--table", db,
                            "--device", d, "--batch-size", "16")
        assert json.loads(proc.stdout.strip().splitlines()[-1])["images"] == 40
        rows[d] = by_path(PredictionTable(str(db)).query())
    assert rows["cuda"].keys() == rows["cpu"].keys()
    for path, cpu in rows["cpu"].items():
        gpu = rows["cuda"][path]
        assert (gpu["top1_label"], gpu["top2_label"]) == (cpu["top1_label"], cpu["top2_label"]), path
        assert gpu["top1_prob"] == pytest.approx(cpu["top1_prob"], abs=1e-3)
        assert gpu["ood_threshold"] == cpu["ood_threshold"]


def test_the_gpu_profile_script_runs_its_whole_path_on_a_cpu(tiny_data, tmp_path):
    """bench/bench_gpu.py, the one command a lent GPU machine runs (docs/performance.md, "The GPU profile"), on a CPU
    with --smoke: every step runs and is recorded; without a GPU its default device says so."""
    out = tmp_path / "gpu"
    run_cli("bench/bench_gpu.py", "--out", out, "--data", tiny_data, "--device", "cpu", "--smoke")
    result = json.loads((out / "summary.json").read_text())
    assert {k: result[k]["ok"] for k in ("step", "train", "predict", "cuda_tests")} == \
        {"step": True, "train": True, "predict": True, "cuda_tests": True}
    rows = result["step"]["rows"]
    assert [r["configuration"] for r in rows] == ["reference (naive x4, fp32, NCHW)", "step-skipping, base",
                                                  "step-skipping, amp", "step-skipping, channels_last+amp"]
    assert all(r["images_per_s"] > 0 and r["finite_steps"] >= 1 and r["peak_mib"] is None for r in rows)
    from data.spec import load_spec
    assert result["predict"]["images"] == len(load_spec(tiny_data).split_samples("test"))
    assert result["train"]["epochs"] == 1 and (out / "artifacts" / "uni" / "exp1" / "best.pt").is_file()
    summary = (out / "summary.md").read_text()
    assert "channels_last+amp (the paper profile's)" in summary and "smoke run" in summary
    if not HAS_CUDA:
        proc = run_cli("bench/bench_gpu.py", "--out", tmp_path / "none", check=False)
        assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr
