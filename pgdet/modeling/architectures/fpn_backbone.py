"""The paper's feature pyramid over a ResNet with a dilated res5 (Rao et al. 2018, §4.1).

With ``RESNETS.RES5_DILATION = 2`` res5 keeps stride 16, so the pyramid is built over
{C2, C3, C5} (strides 4, 8, 16) — still 2x apart, so detectron2's :class:`FPN` does the lateral
and top-down work unchanged. Two things differ from detectron2's ``build_resnet_fpn_backbone``:

* P6 is a 3x3 stride-2 conv on **C5** (stride 32), not a max-pool of P5;
* levels are named after the stage they come from — the paper's P2, P3, P5, P6 — instead of
  detectron2's ``p<log2(stride)>`` (which would call them p2, p3, p4, p5).
"""
import math

import fvcore.nn.weight_init as weight_init
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn


class LastLevelP6FromC5(nn.Module):
    """P6 = 3x3 stride-2 conv on C5 (paper §4.1: "on C5 to produce the coarsest resolution map").

    detectron2's FPN calls it with the bottom-up feature named ``in_feature`` and appends the
    returned maps as extra levels. Named ``p6`` like detectron2's ``LastLevelP6P7.p6`` (also a conv
    on C5), so RetinaNet checkpoints fill it.
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        weight_init.c2_xavier_fill(self.p6)

    def forward(self, c5):
        """c5: (N, C_in, H, W) → [(N, C_out, ceil(H/2), ceil(W/2))]."""
        return [self.p6(c5)]


class StageNamedFPN(FPN):
    """detectron2's :class:`FPN` with levels and layers named after their ResNet stage.

    detectron2 names a level — and its ``fpn_lateral*``/``fpn_output*`` convs — by log2 of its
    stride, which equals the stage only when every stage halves the resolution. Over a dilated res5
    that would call C5's level "p4" and the top block's "p5". Naming by stage gives the paper's
    P2, P3, P5, P6 and keeps C5's lateral under ``fpn_lateral5``, the key detectron2's own FPN
    checkpoints store it under, so those checkpoints still fill every shared layer.
    """

    def __init__(self, bottom_up, in_features, out_channels, norm="", top_block=None,
                 fuse_type="sum"):
        super().__init__(bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
                         fuse_type=fuse_type)
        stages = [int(name[len("res"):]) for name in in_features]
        num_extra = top_block.num_levels if top_block is not None else 0
        names = [f"p{stage}" for stage in stages]
        names += [f"p{stages[-1] + k}" for k in range(1, num_extra + 1)]
        strides = list(self._out_feature_strides.values())
        self._out_features = names
        self._out_feature_strides = dict(zip(names, strides))
        self._out_feature_channels = {name: out_channels for name in names}

        # pop every conv first, then re-add, so a new name never clashes with an old one
        convs = {}
        for stage, stride in zip(stages, strides):
            for kind in ("lateral", "output"):
                old_name = f"fpn_{kind}{int(math.log2(stride))}"
                convs[f"fpn_{kind}{stage}"] = getattr(self, old_name)
                delattr(self, old_name)
        for name, conv in convs.items():
            self.add_module(name, conv)


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (dilated res5) + FPN over ``MODEL.FPN.IN_FEATURES`` + P6 from the last of them.

    With the paper's ``IN_FEATURES [res2, res3, res5]`` it returns p2, p3, p5, p6 at strides
    4, 8, 16, 32, each with ``MODEL.FPN.OUT_CHANNELS`` channels.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_features = cfg.MODEL.FPN.IN_FEATURES
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_feature = in_features[-1]
    top_block = LastLevelP6FromC5(
        bottom_up.output_shape()[top_feature].channels, out_channels, in_feature=top_feature
    )
    return StageNamedFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
