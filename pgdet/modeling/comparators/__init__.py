"""The paper's Table-1 comparators of the policy gradient.

- ``soft_nms``: soft-NMS at test time (Bodla et al. 2017), "standard + soft-NMS";
- ``ohem_roi_heads``: registered ROI heads with online hard example mining (Shrivastava et al.
  2016), "OHEM";
- ``rank_sort_loss``, ``rs_output_layers``, ``rs_roi_heads``: Rank & Sort loss (Oksuz et al.
  2021), the ranking loss a user would pick today to train toward AP, "RS loss" (beyond the paper).
"""
from .ohem_roi_heads import OHEMROIHeads
from .rank_sort_loss import rank_sort_loss
from .rs_output_layers import RSFastRCNNOutputLayers
from .rs_roi_heads import RSROIHeads
from .soft_nms import fast_rcnn_inference_soft_nms

__all__ = [
    "OHEMROIHeads", "RSFastRCNNOutputLayers", "RSROIHeads", "fast_rcnn_inference_soft_nms",
    "rank_sort_loss",
]
