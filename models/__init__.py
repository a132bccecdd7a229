"""Models: PMG on a named backbone, with the heads of a paradigm."""
from models.backbones import BACKBONES, build_backbone
from models.paradigms import PARADIGMS, Paradigm, build_paradigm
from models.pmg import CONCAT, PMG


def build_model(backbone: str, paradigm: Paradigm, pretrained: str = "none",
                branch_mid: int = 512, branch_out: int = 1024, hidden: int = 512) -> PMG:
    """`build_model("resnet50", build_paradigm("uni", spec))` — the paper's efficiency-centric model."""
    return PMG(build_backbone(backbone, pretrained), paradigm.head_sizes, branch_mid, branch_out, hidden)


def model_from_checkpoint(ckpt: dict, spec, path="checkpoint"):
    """(model in eval mode, paradigm) rebuilt from a train.py checkpoint without pretrained weights.

    `spec` is the dataset's Spec (evaluation) or the one stored in the checkpoint (serving)."""
    from utils import CheckpointError
    try:
        paradigm = build_paradigm(ckpt["paradigm"], spec, ckpt.get("task"))
    except Exception as e:
        raise CheckpointError(f"{path}: paradigm {ckpt.get('paradigm')} {ckpt.get('task') or ''} cannot be "
                              f"built from {spec.file}: {e}") from None
    a = ckpt["args"]
    model = build_model(a["backbone"], paradigm, "none", a["branch_mid"], a["branch_out"], a["hidden"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {a['backbone']} with these heads "
                              f"({str(e).splitlines()[0]})") from None
    return model.eval(), paradigm


__all__ = ["BACKBONES", "CONCAT", "PARADIGMS", "PMG", "Paradigm", "build_backbone", "build_model",
           "build_paradigm", "model_from_checkpoint"]
