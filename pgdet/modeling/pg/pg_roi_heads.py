"""pgdet's ROI heads: detectron2's StandardROIHeads with pgdet's box predictor.

The policy-gradient loss needs two things that detectron2 does not hand the box predictor:

- each image's *full* ground truth: the per-image AP reward counts every ground-truth box, also
  those that no sampled RoI matched (attached to the sampled proposals as ``_pg_targets``);
- which sampled RoIs are ground-truth boxes that detectron2 appended to the proposals
  (``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT``): they do not exist at test time, so the reward leaves
  them out (field ``pg_from_gt``, [R_i] bool).

So this class overrides just ``label_and_sample_proposals`` and ``_init_box_head`` (to build
:class:`PGFastRCNNOutputLayers`). With ``MODEL.PG.ENABLED False`` and soft-NMS off it computes
exactly what StandardROIHeads does, so baseline and PG checkpoints are interchangeable.
"""
from typing import List

import torch
from detectron2.modeling import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from .pg_output_layers import PGFastRCNNOutputLayers
from .policy_gradient import FROM_GT_FIELD


def _with_field(instances: Instances, name: str, value: bool, device) -> Instances:
    """A shallow copy of `instances` with a constant bool field `name` (the input is not
    modified: the caller keeps using its targets)."""
    copy = Instances(instances.image_size, **instances.get_fields())
    copy.set(name, torch.full((len(instances),), value, dtype=torch.bool, device=device))
    return copy


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
        # detectron2 appends the targets to the proposals with all the targets' fields and keeps
        # the proposals' fields, so a field set on both marks where each sampled RoI came from.
        sampled = super().label_and_sample_proposals(
            [_with_field(p, FROM_GT_FIELD, False, p.proposal_boxes.device) for p in proposals],
            [_with_field(t, FROM_GT_FIELD, True, t.gt_boxes.device) for t in targets],
        )
        for image_proposals, image_targets in zip(sampled, targets):
            # an attribute, not a field: its length is the image's GT count, not the RoI count
            image_proposals._pg_targets = image_targets
        return sampled
