"""pgdet's detectron2 components, grouped by role; importing this package registers them all.

- ``pg``: the method (reward, advantages, the PG loss, and the ROI heads, RetinaNet and FCOS
  that use it);
- ``comparators``: what Table 1 compares it with (soft-NMS, OHEM; RS loss, beyond the paper);
- ``architectures``: the paper's backbone, RPN head and box head, and a timm backbone.
"""
# comparators before pg: OHEM subclasses PGROIHeads and the PG predictor calls soft-NMS, and only
# this order lets each group finish importing what the other needs.
from .architectures import (
    PerLevelAnchorRPNHead,
    StridedConvFCHead,
    build_resnet_dilated_fpn_backbone,
    build_timm_fpn_backbone,
)
from .comparators import OHEMROIHeads, RSROIHeads
from .pg import PGFCOS, PGCascadeROIHeads, PGFastRCNNOutputLayers, PGRetinaNet, PGROIHeads

__all__ = [
    "OHEMROIHeads",
    "PGCascadeROIHeads",
    "PGFCOS",
    "PGFastRCNNOutputLayers",
    "PGROIHeads",
    "PGRetinaNet",
    "PerLevelAnchorRPNHead",
    "RSROIHeads",
    "StridedConvFCHead",
    "build_resnet_dilated_fpn_backbone",
    "build_timm_fpn_backbone",
]
