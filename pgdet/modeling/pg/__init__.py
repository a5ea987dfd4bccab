"""The method: policy-gradient training of the box classifier (Rao et al. 2018, §3).

- ``reward``: the per-image COCO AP that scores a detection set (SPEC §2);
- ``dataset_reward``: the dataset AP that scores it instead with ``REWARD_SCOPE dataset``, over
  ``reward_memory``, the recent training images;
- ``policy_gradient``: per-box advantages from sampled detection sets (SPEC §1);
- ``pg_output_layers``: the box predictor whose classification loss is PG-weighted;
- ``pg_roi_heads``: the registered ROI heads that hand that predictor what it needs;
- ``pg_cascade_roi_heads``: the same for Cascade R-CNN (D = the stages' mean scores);
- ``dense_policy_gradient``: the same method for one-stage detectors (sigmoid classifiers);
- ``pg_retinanet``: the registered RetinaNet that uses it;
- ``pg_fcos``: the FCOS that uses it (a LazyConfig model: PG options as an argument);
- ``pg_options``: the MODEL.PG options, action stream and logging every family shares.
"""
from .pg_cascade_roi_heads import PGCascadeROIHeads
from .pg_fcos import PGFCOS
from .pg_output_layers import PGFastRCNNOutputLayers
from .pg_retinanet import PGRetinaNet
from .pg_roi_heads import PGROIHeads
from .policy_gradient import InferenceThresholds, PGAdvantages, PGSettings, compute_advantages
from .reward import COCO_IOU_THRESHOLDS, image_ap

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "InferenceThresholds",
    "PGAdvantages",
    "PGCascadeROIHeads",
    "PGFCOS",
    "PGFastRCNNOutputLayers",
    "PGROIHeads",
    "PGRetinaNet",
    "PGSettings",
    "compute_advantages",
    "image_ap",
]
