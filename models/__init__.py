"""Models: PMG on a named backbone, with the heads of a paradigm."""
from models.backbones import BACKBONES, build_backbone
from models.paradigms import PARADIGMS, Paradigm, build_paradigm
from models.pmg import CONCAT, PMG


def build_model(backbone: str, paradigm: Paradigm, pretrained: str = "none",
                branch_mid: int = 512, branch_out: int = 1024, hidden: int = 512) -> PMG:
    """`build_model("resnet50", build_paradigm("uni", spec))` — the paper's efficiency-centric model."""
    return PMG(build_backbone(backbone, pretrained), paradigm.head_sizes, branch_mid, branch_out, hidden)


__all__ = ["BACKBONES", "CONCAT", "PARADIGMS", "PMG", "Paradigm", "build_backbone", "build_model",
           "build_paradigm"]
