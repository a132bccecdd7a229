"""The speed levers of serving change no result: BatchNorm folding and the ONNX Runtime backend
give the eager model's logits (models/serving.py), and the pipeline's decode path (in-process
threads, JPEG DCT scaling for large files) writes the rows the DataLoader + full decode wrote.
Nothing here is timed: bench/bench_pipeline.py and bench/bench_serving.py measure the speed."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.bench_pipeline import full_decode
from bench.bench_serving import random_bn
from tests.builders import write_bad_files, write_images
from tests.conftest import TINY_TRAIN, run_cli


@pytest.fixture(scope="module")
def uni(tiny_data, tmp_path_factory) -> Path:
    """A uni checkpoint trained by train.py for one epoch on the tiny embedded dataset."""
    out = tmp_path_factory.mktemp("serving_speed")
    run_cli("train.py", "--data", tiny_data, "--paradigm", "uni", "--epochs", "1", "--artifacts", out, *TINY_TRAIN)
    return out / "uni" / "exp1" / "best.pt"


def batchnorms_called(model, x) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    called = []
    hooks = [m.register_forward_hook(lambda m, a, o: called.append(names[m])) for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.inference_mode():
        model(x, features=True)
    for h in hooks:
        h.remove()
    return called


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_batchnorm_folding_keeps_the_logits_and_features(backbone):
    from models import build_model
    from models.paradigms import Head, Paradigm
    from models.serving import TorchBackend, fold_batchnorm
    names = ("a", "b", "c", "d")
    paradigm = Paradigm("uni", None, names, (Head("classes", "softmax", names),), "max_logit")
    torch.manual_seed(0)
    model = random_bn(build_model(backbone, paradigm, "none", 32, 64, 32))
    x = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model, x[:2])
    assert batchnorms_called(model, x) and not batchnorms_called(folded, x)  # every BN on the path folded
    with torch.inference_mode():
        (z0, f0), (z1, f1) = model(x, features=True), folded(x, features=True)
    assert torch.allclose(z0, z1, atol=1e-4, rtol=1e-4) and torch.allclose(f0, f1, atol=1e-4, rtol=1e-4)
    backend = TorchBackend(model, 48)  # the serving interface: (logits, features), channels_last
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in backend.model.modules() if isinstance(m, torch.nn.Conv2d))
    for b in (backend, TorchBackend(model, 48, channels_last=False)):
        z2, f2 = b(x)
        assert torch.allclose(z0, z2, atol=1e-4, rtol=1e-4) and torch.allclose(f0, f2, atol=1e-4, rtol=1e-4)
    # The original is left as it was (the fold works on a copy).
    assert batchnorms_called(model, x)


def tiny_images(tiny_data: Path) -> list[Path]:
    return sorted(tiny_data.rglob("*.jpg"))[:24]


def test_onnx_backend_round_trips_a_checkpoint(uni, tiny_data):
    from models import checkpoint as checkpoints
    from models.serving import build_backend, onnx_available
    reason = onnx_available()
    if reason:
        pytest.skip(f"ONNX backend not installed here: {reason}")
    from data.loading import ImageSet, collate_skip_bad
    ck = checkpoints.load(uni)
    paths = tiny_images(tiny_data)
    ds = ImageSet([(p, i) for i, p in enumerate(paths)], ck.transform())
    x, good, errors = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert not errors and len(good) == len(paths)
    backend = build_backend(ck.model, "onnx", crop=ck.crop)
    with torch.inference_mode():
        z0, f0 = ck.model(x, features=True)
    for batch in (x, x[:1]):  # the batch axis is dynamic
        z1, f1 = backend(batch)
        assert (z1 - z0[:len(batch)]).abs().max() <= 1e-3 and (f1 - f0[:len(batch)]).abs().max() <= 1e-3
    labels0, _ = ck.paradigm.top_labels(z0, 2)
    labels1, _ = ck.paradigm.top_labels(backend(x)[0], 2)
    assert labels0 == labels1


def test_serving_pixels_are_the_eval_transform_bit_for_bit(uni, tiny_data, tmp_path):
    """Serving decodes to uint8 pixels and normalises per batch: the very tensor of the eval
    transform (a large photo too), and so the same outputs from the predictor."""
    from PIL import Image

    from data.loading import ImageSet, collate_skip_bad, normalize_pixels
    from models import checkpoint as checkpoints
    from pipeline.model import Predictor
    ck = checkpoints.load(uni)
    photo = tmp_path / "photo.jpg"
    Image.open(tiny_images(tiny_data)[0]).resize((1600, 1200)).save(photo, quality=90)
    paths = [*tiny_images(tiny_data), photo]
    floats, _, bad = collate_skip_bad([ImageSet([(p, 0) for p in paths], ck.transform())[i] for i in range(len(paths))])
    pixels, _, _ = collate_skip_bad([ImageSet([(p, 0) for p in paths], ck.pixels())[i] for i in range(len(paths))])
    assert not bad and pixels.dtype == torch.uint8 and torch.equal(normalize_pixels(pixels), floats)
    pred = Predictor.load(uni)
    pred.resolve_threshold(0.0)
    a, b = pred.outputs(floats), pred.outputs(pixels)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])


def rows_by_id(rows: list[dict]) -> dict[str, dict]:
    """Rows without their write time; Pillow names the file descriptor it read in some decode errors
    (`<_io.BufferedReader name=11>`), which depends on the process, not on the file."""
    fd = re.compile(r"name=\d+>")
    return {r["image_id"]: {k: fd.sub("name=FD>", v) if k == "error" and v else v for k, v in r.items()
                            if k != "processed_at"} for r in rows}


def test_pipeline_decode_path_writes_the_same_rows_as_before(uni, tmp_path, monkeypatch):
    from pipeline.batch import predicted, run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    src = tmp_path / "src"
    write_images(src / "good", 13, size=40)
    kinds = write_bad_files(src / "bad")
    pred = Predictor.load(uni)
    pred.resolve_threshold(0.0)
    items = list_source(src)
    assert len(items) == 13 + len(kinds)
    with full_decode(), monkeypatch.context() as m:
        m.setattr(pred, "pixels", pred.transform)  # the old decode: float tensors per image
        before: list[dict] = []
        run_batch(pred, None, items, 8, 2, False, on_rows=before.extend)  # the old default: 2 processes
    configs = [dict(workers=None), dict(workers=0, threads=1, streams=1), dict(workers=0, threads=2, streams=1),
               dict(workers=1), dict(workers=0, streams=2), dict(workers=0, streams=3)]
    for how in configs:  # every decode layout: the same rows, in the same order
        now: list[dict] = []
        run_batch(pred, None, items, 8, how["workers"], False, on_rows=now.extend, threads=how.get("threads"),
                  streams=how.get("streams"))
        assert rows_by_id(now) == rows_by_id(before), how
        assert [r["image_id"] for r in now] == [r["image_id"] for r in before], how
    statuses = {Path(r["source"]).name: r["status"] for r in before}
    assert {n: ("good" if statuses[n] != "error" else "error") for n in kinds} == kinds
    # The queue consumer's path (each message batch of 8 through `predicted`, one part per stream as
    # Consumer.process; also in parts of 1, 3 and 8) gives them too: the same rows, the scores equal
    # up to float rounding (a forward on 1 or 3 images adds in another order than on 8).
    for part, streams in ((1, 1), (3, 1), (8, 1), (None, 2), (None, 3)):
        rows = []
        for i in range(0, len(items), 8):
            chunk = items[i:i + 8]
            rows += [r for _, part_rows in predicted(pred, chunk, part or len(chunk), workers=0,
                                                     streams=streams) for r in part_rows]
        assert [r["image_id"] for r in rows] == [it.image_id for it in items], part
        now, then = rows_by_id(rows), rows_by_id(before)
        assert now.keys() == then.keys(), part
        for key, row in now.items():
            assert row.keys() == then[key].keys(), (part, key)
            for k, v in row.items():
                assert v == (pytest.approx(then[key][k], rel=1e-5) if isinstance(v, float) else then[key][k]), \
                    (part, key, k)


def test_dct_scaling_only_for_large_jpegs_and_close_to_the_full_decode(tmp_path):
    from data.images import load_rgb
    from data.loading import ImageSet, decode_size, eval_transform, train_transform
    tf = eval_transform(72, 64)
    assert decode_size(tf) == (72, 72) and decode_size(train_transform(36, 32)) == (36, 36)
    rng = np.random.default_rng(0)
    small = tmp_path / "small.jpg"  # under 4x the target: decoded exactly as without a size
    Image.fromarray(rng.integers(0, 255, (280, 280, 3), dtype=np.uint8)).save(small, quality=90)
    assert np.array_equal(np.asarray(load_rgb(small, (72, 72))), np.asarray(load_rgb(small)))
    # A phone-size photo, smooth like a photograph, stored sideways with an EXIF orientation tag.
    yy, xx = np.mgrid[0:1200, 0:1600]
    a = np.stack([(xx / 1600 * 255), (yy / 1200 * 255), ((xx + yy) % 256)], -1).astype(np.uint8)
    photo = Image.fromarray(a)
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    big = tmp_path / "big.jpg"
    photo.save(big, quality=92, exif=exif)
    full, drafted = load_rgb(big), load_rgb(big, (72, 72))
    assert full.size == (1200, 1600) and drafted.size[0] < drafted.size[1]  # shown upright, both
    assert min(drafted.size) >= 2 * 72 and drafted.size[0] < full.size[0] // 2  # reduced, never below 2x
    ds = ImageSet([(big, 0)], tf)
    x_draft = ds[0][0]
    x_full = tf(full)
    # Within resampling noise: a few grey levels at most (normalised units: 1/255/0.225 per level).
    diff = (x_draft - x_full).abs() * 0.225 * 255
    assert diff.max() <= 8 and diff.mean() <= 1.5
    png = tmp_path / "big.png"  # not a JPEG: always the full decode
    photo.save(png)
    assert load_rgb(png, (72, 72)).size == (1600, 1200)


@pytest.mark.parametrize("cpu_max,affinity,expected", [
    ("max 100000\n", 8, 8),          # no quota: the CPU set
    ("max 100000\n", 16, 16),        # many cores: DataLoader worker processes
    ("200000 100000\n", 64, 2),      # a 2-CPU pod on a 64-core node
    ("150000 100000\n", 64, 2),      # 1.5 CPUs: rounded up
    ("400000 100000\n", 2, 2),       # a quota above the CPU set
    ("garbage\n", 4, 4),             # a file this does not understand: the CPU set
    (None, 4, 4),                    # no cgroup v2 file
])
def test_cores_and_the_thread_rules_follow_the_cpu_quota(monkeypatch, tmp_path, cpu_max, affinity, expected):
    """cores() is the CPU set capped by a container's cgroup v2 CPU quota; up to 8 cores decoding
    is in-process, one stream per core at one torch thread each (one stream: the forward and the
    decoders each get every core), above that the DataLoader worker processes take a quarter and
    one stream the rest; a queue consumer (in-process) has at most 8 streams sharing the cores."""
    import provenance
    import utils
    from pipeline import batch
    f = tmp_path / "cpu.max"
    if cpu_max is not None:
        f.write_text(cpu_max)
    monkeypatch.setattr(provenance, "CPU_MAX", f)
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert batch.cores() == expected
    assert utils.trial_jobs(4, cuda=False) == (min(expected, 4), expected // min(expected, 4))  # training runs too
    if expected <= 8:
        assert batch.default_workers() == 0 and batch.default_streams() == expected
        assert batch.default_torch_threads() == 1
    else:
        assert batch.default_workers() == expected // 4 and batch.default_streams() == 1
        assert batch.default_torch_threads() == expected - expected // 4
    assert batch.default_streams(workers=0) == min(expected, 8)
    assert batch.default_torch_threads(workers=0) == max(1, expected // min(expected, 8))
    assert batch.decode_threads() == batch.default_torch_threads(workers=0, streams=1) == expected
    assert batch.default_torch_threads(workers=1) == max(1, expected - 1)
    # streams share the cores out, and the images evenly enough that no stream idles at the end
    assert batch.default_torch_threads(workers=0, streams=2) == max(1, expected // 2)
    assert batch.stream_batch(32, 32, 3) == 11 and batch.stream_batch(32, 32, 1) == 32  # a message batch
    assert batch.stream_batch(200, 64, 2) == 50 and batch.stream_batch(64, 64, 2) == 32
    assert batch.stream_batch(1000, 64, 2) == 63 and batch.stream_batch(1, 64, 4) == 1
