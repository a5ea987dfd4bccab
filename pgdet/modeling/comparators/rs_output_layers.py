"""The box predictor of RS-R-CNN: Rank & Sort loss for the classifier (Oksuz et al., ICCV 2021).

With ``MODEL.RS_LOSS.ENABLED``:

- **sigmoid scores referenced to the background logit.** detectron2's classifier has K+1 logits
  z (background last). The RS scores are s_k = z_k − detach(z_K): sigmoid(s_k) = p_k / (p_k +
  p_bg) under the softmax, so a softmax-trained baseline starts with its own ranking of each
  class against background, and training moves only the K class columns (the background column
  is a fixed reference: exactly a K-way sigmoid classifier initialised with W_k − W_K). From
  random weights it is a plain sigmoid classifier. Inference uses sigmoid(s_k).
- **the classification loss** is L_RS over every (RoI, class) pair of the batch ranked together:
  the positives are the foreground RoIs at their ground-truth class, with quality y = IoU of the
  box predicted for that class with the ground truth (what evaluation ranks); every other pair
  is a negative (:mod:`.rank_sort_loss`).
- **the box loss** (``BOX_LOSS score_weighted_giou``, the paper's): GIoU of each foreground
  RoI's predicted box, weighted by its detached score sigmoid(s_gt) and normalised by the sum
  of the weights; ``standard``: detectron2's configured box loss.
- **self-balance** (``SELF_BALANCE``, the paper's tuning-free task weight): the box loss is
  multiplied by detach(L_RS / L_box), so both tasks have the same magnitude every iteration.

Off, every method is FastRCNNOutputLayers' (through PGFastRCNNOutputLayers, with PG off), so
checkpoints interchange and soft-NMS works as for every other row.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss

from ...config_error import ConfigError, raise_if_invalid
from ..pg.pg_output_layers import PGFastRCNNOutputLayers, _check_finite
from .rank_sort_loss import rank_sort_loss

RS_BOX_LOSSES = ("score_weighted_giou", "standard")


def check_rs_config(cfg):
    """Fail at build time, naming the key, when a MODEL.RS_LOSS option cannot work."""
    rs = cfg.MODEL.RS_LOSS
    problems = []
    if not 0 <= rs.DELTA <= 1:
        problems.append(f"MODEL.RS_LOSS.DELTA must be in [0, 1] (the paper: 0.5), got {rs.DELTA}")
    if rs.BOX_LOSS not in RS_BOX_LOSSES:
        problems.append(f"MODEL.RS_LOSS.BOX_LOSS must be one of {RS_BOX_LOSSES}, got {rs.BOX_LOSS!r}")
    if rs.ENABLED and cfg.MODEL.PG.ENABLED:
        problems.append("MODEL.RS_LOSS.ENABLED and MODEL.PG.ENABLED both replace the classification "
                        "loss: enable one of them")
    if rs.ENABLED and cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE:
        problems.append("MODEL.RS_LOSS.ENABLED has its own sigmoid scores (class logit minus "
                        "background logit): set MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False")
    raise_if_invalid("RS-loss", problems)


class RSFastRCNNOutputLayers(PGFastRCNNOutputLayers):
    """PGFastRCNNOutputLayers whose losses, with ``rs_enabled``, are RS-R-CNN's (module doc)."""

    @configurable
    def __init__(self, *args, rs_enabled: bool = False, rs_delta: float = 0.5,
                 rs_box_loss: str = "score_weighted_giou", rs_self_balance: bool = True,
                 **kwargs):
        """
        Args beyond PGFastRCNNOutputLayers':
            rs_enabled: RS loss and sigmoid scores instead of detectron2's losses and softmax.
            rs_delta: δ of the smoothed step.
            rs_box_loss: "score_weighted_giou" (the paper) or "standard" (detectron2's).
            rs_self_balance: multiply the box loss by detach(L_RS / L_box).
        """
        super().__init__(*args, **kwargs)
        if rs_enabled and (self.pg_enabled or self.use_sigmoid_ce):
            raise ConfigError("RS loss replaces the classification loss and the scores: "
                             "it needs PG off and USE_SIGMOID_CE False")
        self.rs_enabled = rs_enabled
        self.rs_delta = rs_delta
        self.rs_box_loss = rs_box_loss
        self.rs_self_balance = rs_self_balance

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_rs_config(cfg)
        ret = super().from_config(cfg, input_shape)
        rs = cfg.MODEL.RS_LOSS
        ret.update(rs_enabled=rs.ENABLED, rs_delta=rs.DELTA, rs_box_loss=rs.BOX_LOSS,
                   rs_self_balance=rs.SELF_BALANCE)
        return ret

    @staticmethod
    def sigmoid_logits(scores: torch.Tensor) -> torch.Tensor:
        """[R, K+1] logits (background last) -> [R, K] s_k = z_k − detach(z_K)."""
        return scores[:, :-1] - scores[:, -1:].detach()

    def predict_probs(self, predictions, proposals: List[Instances]):
        if not self.rs_enabled:
            return super().predict_probs(predictions, proposals)
        scores, _ = predictions
        probs = self.sigmoid_logits(scores).sigmoid()
        probs = cat([probs, probs.new_zeros(len(probs), 1)], dim=1)  # background column, unused
        return probs.split([len(p) for p in proposals], dim=0)

    def losses(self, predictions, proposals: List[Instances]):
        if not self.rs_enabled:
            return super().losses(predictions, proposals)
        scores, deltas = predictions
        storage = get_event_storage()
        _check_finite(scores, deltas, proposals, storage.iter)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        fg = torch.nonzero(gt_classes < self.num_classes).squeeze(1)
        fg_classes = gt_classes[fg]
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor
                        for p in proposals], dim=0)
        if deltas.shape[1] == 4:  # class-agnostic regression
            fg_deltas = deltas[fg]
        else:
            fg_deltas = deltas.view(len(deltas), self.num_classes, 4)[fg, fg_classes]
        fg_boxes = self.box2box_transform.apply_deltas(fg_deltas, proposal_boxes[fg])  # [F, 4]
        quality = matched_pairwise_iou(Boxes(fg_boxes.detach()), Boxes(gt_boxes[fg]))  # [F]

        logits = self.sigmoid_logits(scores)  # [R, K]
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[fg, fg_classes] = True
        targets = torch.zeros_like(logits)
        targets[fg, fg_classes] = quality
        ranking, sorting = rank_sort_loss(logits, positive, targets, self.rs_delta)
        loss_cls = ranking + sorting

        if self.rs_box_loss == "score_weighted_giou":
            weight = logits.detach()[fg, fg_classes].sigmoid()  # [F]
            per_roi = giou_loss(fg_boxes, gt_boxes[fg], reduction="none")
            loss_box = (weight * per_roi).sum() / weight.sum().clamp_min(1e-6)
        else:
            loss_box = self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes)
        balance = (loss_cls / loss_box).detach() if self.rs_self_balance and loss_box > 0 else 1.0
        storage.put_scalar("rs/ranking_error", ranking.item())
        storage.put_scalar("rs/sorting_error", sorting.item())
        storage.put_scalar("rs/num_positives", float(len(fg)))
        storage.put_scalar("rs/mean_positive_iou", quality.mean().item() if len(fg) else 0.0)
        storage.put_scalar("rs/box_loss_weight", float(balance))
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box * balance}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}
