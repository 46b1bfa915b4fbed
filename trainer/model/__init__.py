"""The YOLOv4 family: architecture spec -> nn.Module, named variants, checkpoints.

from trainer.model import get_spec, build
model = build(get_spec("yolov4-n"), seed=0)
maps = model(x)  # 3 x (B, A*(5+C), H/s, W/s) raw logits, s = 8, 16, 32
"""

from .checkpoint import WeightsMismatchError, load_checkpoint, load_weights, save_checkpoint
from .profile import count_params, fp32_mib, gflops
from .spec import (
    BackboneSpec,
    BlockSpec,
    BottomUpSpec,
    ConvNode,
    HeadSpec,
    NeckSpec,
    SpecError,
    SppSpec,
    StageSpec,
    TopDownSpec,
    YoloSpec,
)
from .variants import get_spec, list_variants, scaled_spec
from .yolov4 import YOLOv4, build

__all__ = [
    "BackboneSpec",
    "BlockSpec",
    "BottomUpSpec",
    "ConvNode",
    "HeadSpec",
    "NeckSpec",
    "SpecError",
    "SppSpec",
    "StageSpec",
    "TopDownSpec",
    "WeightsMismatchError",
    "YOLOv4",
    "YoloSpec",
    "build",
    "count_params",
    "fp32_mib",
    "get_spec",
    "gflops",
    "list_variants",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "scaled_spec",
]
