"""pgdet's detectron2 components; importing this package registers them all."""
from .box_head import StridedConvFCHead
from .fpn_backbone import build_resnet_dilated_fpn_backbone
from .ohem_roi_heads import OHEMROIHeads
from .pg_output_layers import PGFastRCNNOutputLayers
from .pg_roi_heads import PGROIHeads
from .pretrained_backbone import build_timm_fpn_backbone
from .rpn_head import PerLevelAnchorRPNHead

__all__ = [
    "OHEMROIHeads",
    "PGFastRCNNOutputLayers",
    "PGROIHeads",
    "PerLevelAnchorRPNHead",
    "StridedConvFCHead",
    "build_resnet_dilated_fpn_backbone",
    "build_timm_fpn_backbone",
]
