"""pgdet's ROI heads: detectron2's StandardROIHeads with pgdet's box predictor.

The only thing the policy-gradient loss needs that detectron2 does not hand the box predictor is
each image's *full* ground truth: the per-image AP reward counts every ground-truth box, also
those that no sampled RoI matched. So this class overrides just ``label_and_sample_proposals`` to
attach it to the sampled proposals, and ``_init_box_head`` to build
:class:`PGFastRCNNOutputLayers`. With ``MODEL.PG.ENABLED False`` and soft-NMS off it computes
exactly what StandardROIHeads does, so baseline and PG checkpoints are interchangeable.
"""
from typing import List

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from .pg_output_layers import PGFastRCNNOutputLayers


@ROI_HEADS_REGISTRY.register()
class PGROIHeads(StandardROIHeads):
    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = PGFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        sampled = super().label_and_sample_proposals(proposals, targets)
        for image_proposals, image_targets in zip(sampled, targets):
            # an attribute, not a field: its length is the image's GT count, not the RoI count
            image_proposals._pg_targets = image_targets
        return sampled
