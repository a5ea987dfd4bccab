"""The paper's Table-1 comparators of the policy gradient.

- ``soft_nms``: soft-NMS at test time (Bodla et al. 2017), "standard + soft-NMS";
- ``ohem_roi_heads``: registered ROI heads with online hard example mining (Shrivastava et al.
  2016), "OHEM".
"""
from .ohem_roi_heads import OHEMROIHeads
from .soft_nms import fast_rcnn_inference_soft_nms

__all__ = ["OHEMROIHeads", "fast_rcnn_inference_soft_nms"]
