"""Online hard example mining in the ROI heads (Shrivastava et al. 2016; paper Table 1 "OHEM").

Instead of sampling a fixed fraction of foreground RoIs at random, OHEM scores a large pool of
RoIs per image by their current loss, without gradient (the paper's read-only RoI network),
suppresses near-duplicates with NMS over the RoIs ordered by loss, and trains on the hardest B
only (the trainable copy: the box head is run again on them). Inference is unchanged.
"""
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat, ciou_loss, diou_loss, nms
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, smooth_l1_loss

from ...config_error import raise_if_invalid
from ..pg.pg_roi_heads import PGROIHeads

_BOX_IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def check_ohem_config(cfg):
    """Fail at build time, naming the key, when a MODEL.OHEM option cannot work."""
    ohem = cfg.MODEL.OHEM
    problems = []
    if ohem.BATCH_SIZE_PER_IMAGE < 1:
        problems.append(
            f"MODEL.OHEM.BATCH_SIZE_PER_IMAGE must be >= 1, got {ohem.BATCH_SIZE_PER_IMAGE}"
        )
    if ohem.POOL_SIZE_PER_IMAGE < max(ohem.BATCH_SIZE_PER_IMAGE, 1):
        problems.append(
            f"MODEL.OHEM.POOL_SIZE_PER_IMAGE must be >= MODEL.OHEM.BATCH_SIZE_PER_IMAGE "
            f"({ohem.BATCH_SIZE_PER_IMAGE}) and >= 1, got {ohem.POOL_SIZE_PER_IMAGE}"
        )
    if not 0 < ohem.NMS_THRESH <= 1:
        problems.append(f"MODEL.OHEM.NMS_THRESH must be in (0, 1], got {ohem.NMS_THRESH}")
    raise_if_invalid("OHEM", problems)


def per_roi_losses(predictor, predictions, proposals: List[Instances]) -> torch.Tensor:
    """The loss of each RoI: detectron2's FastRCNNOutputLayers terms, not reduced.

    Classification cross-entropy (softmax, or the sigmoid variant summed over classes, without
    federated-loss class sampling) plus, for foreground RoIs, the box-regression loss of the
    ground-truth class, each weighted by ``predictor.loss_weight`` as in ``losses()``.

    Args:
        predictor: a FastRCNNOutputLayers.
        predictions: its outputs, scores [R, K+1] and deltas [R, K*4] or [R, 4].
        proposals: per image, Instances with proposal_boxes, gt_classes and (if the image has
            ground truth) gt_boxes; R RoIs in total.
    Returns:
        [R] losses.
    """
    scores, deltas = predictions
    gt_classes = cat([p.gt_classes for p in proposals])
    proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals])
    gt_boxes = cat(
        [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals]
    )

    if predictor.use_sigmoid_ce:
        targets = F.one_hot(gt_classes, scores.shape[1])[:, :-1].to(scores.dtype)
        loss_cls = F.binary_cross_entropy_with_logits(scores[:, :-1], targets, reduction="none")
        loss_cls = loss_cls.sum(1)
    else:
        loss_cls = F.cross_entropy(scores, gt_classes, reduction="none")

    num_classes = predictor.num_classes
    fg = (gt_classes >= 0) & (gt_classes < num_classes)
    if deltas.shape[1] == 4:
        fg_deltas = deltas[fg]
    else:
        fg_deltas = deltas.view(len(deltas), num_classes, 4)[fg, gt_classes[fg]]
    if predictor.box_reg_loss_type == "smooth_l1":
        gt_deltas = predictor.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
        fg_loss = smooth_l1_loss(fg_deltas, gt_deltas, predictor.smooth_l1_beta, reduction="none")
        fg_loss = fg_loss.sum(1)
    else:
        fg_boxes = predictor.box2box_transform.apply_deltas(fg_deltas, proposal_boxes[fg])
        iou_loss = _BOX_IOU_LOSSES[predictor.box_reg_loss_type]
        fg_loss = iou_loss(fg_boxes, gt_boxes[fg], reduction="none")
    loss_box_reg = torch.zeros_like(loss_cls).masked_scatter(fg, fg_loss)

    weight = predictor.loss_weight
    return loss_cls * weight.get("loss_cls", 1.0) + loss_box_reg * weight.get("loss_box_reg", 1.0)


def _select(proposals: Instances, indices: torch.Tensor) -> Instances:
    """``proposals[indices]``, keeping plain attributes too: Instances indexing keeps only fields,
    but PGROIHeads attaches the image's full ground truth as an attribute for the PG loss."""
    selected = proposals[indices]
    for name, value in vars(proposals).items():
        if name not in ("_image_size", "_fields"):
            setattr(selected, name, value)
    return selected


@ROI_HEADS_REGISTRY.register()
class OHEMROIHeads(PGROIHeads):
    """PGROIHeads trained on the hardest RoIs of each image (Shrivastava et al. 2016).

    ``label_and_sample_proposals`` (inherited) labels the pool: it is given the pool size as its
    batch size and a positive fraction of 1, so it keeps every proposal up to the pool size.
    ``_forward_box`` mines the hard RoIs of the pool and computes the standard losses on them.
    Only the box head mines: mask / keypoint heads, which pgdet does not use, would see the pool.
    """

    @configurable
    def __init__(self, *, ohem_nms_thresh: float, ohem_batch_size_per_image: int, **kwargs):
        """
        Args beyond PGROIHeads':
            ohem_nms_thresh: IoU above which a RoI is suppressed by a harder one.
            ohem_batch_size_per_image: B, the hardest RoIs per image that are trained on.
            (``batch_size_per_image`` is the pool size.)
        """
        super().__init__(**kwargs)
        self.ohem_nms_thresh = ohem_nms_thresh
        self.ohem_batch_size_per_image = ohem_batch_size_per_image

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_ohem_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret.update(
            batch_size_per_image=cfg.MODEL.OHEM.POOL_SIZE_PER_IMAGE,
            positive_fraction=1.0,
            ohem_nms_thresh=cfg.MODEL.OHEM.NMS_THRESH,
            ohem_batch_size_per_image=cfg.MODEL.OHEM.BATCH_SIZE_PER_IMAGE,
        )
        return ret

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        if not self.training:
            return super()._forward_box(features, proposals)
        return super()._forward_box(features, self.select_hard_examples(features, proposals))

    @torch.no_grad()
    def select_hard_examples(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[Instances]:
        """Per image, the hardest ``ohem_batch_size_per_image`` labelled RoIs after RoI-NMS.

        Args:
            features: the backbone features, as in ``forward``.
            proposals: per image, the labelled pool (proposal_boxes, gt_classes, gt_boxes).
        Returns:
            per image, the selected proposals, hardest first.
        """
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        losses = per_roi_losses(self.box_predictor, predictions, proposals)
        hard = []
        losses = losses.split([len(p) for p in proposals])
        for image_proposals, image_losses in zip(proposals, losses):
            keep = nms(image_proposals.proposal_boxes.tensor, image_losses, self.ohem_nms_thresh)
            hard.append(_select(image_proposals, keep[: self.ohem_batch_size_per_image]))

        num_fg = [int((p.gt_classes < self.num_classes).sum()) for p in hard]
        storage = get_event_storage()
        storage.put_scalar("ohem/num_fg_samples", np.mean(num_fg))
        num_bg = [len(p) - n for p, n in zip(hard, num_fg)]
        storage.put_scalar("ohem/num_bg_samples", np.mean(num_bg))
        return hard
