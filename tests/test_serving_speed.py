"""The speed levers of serving change no result: BatchNorm folding keeps the eager model's logits
(models/serving.py; the exported graph's round trip: tests/test_release.py), serving's numpy
pixels are the eval transform's bit for bit, every decode layout (in-process streams or threads,
decode processes, a queue consumer's message batches) writes the same rows, and JPEG DCT scaling
stays close to the full decode. Nothing here is timed: bench/bench_pipeline.py and
bench/bench_serving.py measure the speed."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.bench_serving import random_bn
from tests.builders import write_bad_files, write_images


@pytest.fixture(scope="module")
def uni(bundles) -> Path:
    return bundles["uni"]


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
    from models.serving import fold_batchnorm
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
    # The original is left as it was (the fold works on a copy).
    assert batchnorms_called(model, x)


def tiny_images(tiny_data: Path) -> list[Path]:
    return sorted(tiny_data.rglob("*.jpg"))[:24]


@pytest.mark.parametrize("resize,crop", [(36, 32), (72, 64), (256, 224), (64, 64)])
def test_serving_pixels_are_the_eval_transform_bit_for_bit(resize, crop, tiny_data, tmp_path):
    """pipeline.pixels (numpy, no torch) gives data.loading's eval transform bit for bit: uint8
    pixels as eval_pixels, normalised floats as eval_transform, a large EXIF-rotated photo (decoded
    at a reduced DCT scale) and a greyscale PNG too."""
    from data.images import load_rgb
    from data.loading import IMAGENET_MEAN, IMAGENET_STD, decode_size, eval_pixels, eval_transform
    from pipeline.pixels import Pixels
    photo = tmp_path / "photo.jpg"
    image = Image.open(tiny_images(tiny_data)[0]).resize((1600, 1200))
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(photo, quality=90, exif=exif)
    grey = tmp_path / "grey.png"
    image.convert("L").resize((90, 50)).save(grey)
    pixels, floats = eval_pixels(resize, crop), eval_transform(resize, crop)
    serve = Pixels(resize, crop, IMAGENET_MEAN, IMAGENET_STD)
    for path in [*tiny_images(tiny_data), photo, grey]:
        a = serve(path)
        assert a.dtype == np.uint8 and a.shape == (3, crop, crop)
        assert np.array_equal(a, pixels(load_rgb(path, decode_size(pixels))).numpy()), path
        assert np.array_equal(serve.normalize(a[None])[0], floats(load_rgb(path, decode_size(floats))).numpy()), path
    with pytest.raises(ValueError, match="at most the resize"):
        Pixels(32, 36, IMAGENET_MEAN, IMAGENET_STD)


def rows_by_id(rows: list[dict]) -> dict[str, dict]:
    """Rows without their write time; Pillow names the file descriptor it read in some decode errors
    (`<_io.BufferedReader name=11>`), which depends on the process, not on the file."""
    fd = re.compile(r"name=\d+>")
    return {r["image_id"]: {k: fd.sub("name=FD>", v) if k == "error" and v else v for k, v in r.items()
                            if k != "processed_at"} for r in rows}


def test_every_decode_layout_writes_the_same_rows(uni, tmp_path):
    from pipeline.batch import predicted, run_batch
    from pipeline.model import Predictor
    from pipeline.sources import list_source
    src = tmp_path / "src"
    write_images(src / "good", 13, size=40)
    kinds = write_bad_files(src / "bad")
    pred = Predictor.load(uni, threshold=0.0)
    items = list_source(src)
    assert len(items) == 13 + len(kinds)
    before: list[dict] = []
    run_batch(pred, None, items, 8, 2, False, on_rows=before.extend)  # 2 decode processes
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
    is in-process, two streams per core (8 at most) at one inference thread each (one stream: the forward and
    the decoders each get every core), above that decode processes take a quarter and one stream
    the rest; a queue consumer (in-process) has at most 8 streams sharing the cores."""
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
        assert batch.default_workers() == 0 and batch.default_streams() == min(2 * expected, 8)
        assert batch.default_threads() == 1
    else:
        assert batch.default_workers() == expected // 4 and batch.default_streams() == 1
        assert batch.default_threads() == expected - expected // 4
    assert batch.default_streams(workers=0) == min(2 * expected, 8)
    assert batch.default_threads(workers=0) == max(1, expected // min(2 * expected, 8))
    assert batch.decode_threads() == batch.default_threads(workers=0, streams=1) == expected
    assert batch.default_threads(workers=1) == max(1, expected - 1)
    # streams share the cores out, and the images evenly enough that no stream idles at the end
    assert batch.default_threads(workers=0, streams=2) == max(1, expected // 2)
    assert batch.stream_batch(32, 32, 3) == 11 and batch.stream_batch(32, 32, 1) == 32  # a message batch
    assert batch.stream_batch(200, 64, 2) == 50 and batch.stream_batch(64, 64, 2) == 32
    assert batch.stream_batch(1000, 64, 2) == 63 and batch.stream_batch(1, 64, 4) == 1
