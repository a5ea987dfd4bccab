"""pgdet's RetinaNet: detectron2's RetinaNet with the policy-gradient classification loss.

Only training changes, and only ``loss_cls``: ``γ · focal loss + c · PG term`` (derivation in
:mod:`pgdet.modeling.pg.dense_policy_gradient`); box regression and inference are detectron2's.
With ``MODEL.PG.ENABLED False`` it is detectron2's RetinaNet, so checkpoints are interchangeable
(a model-zoo RetinaNet loads into it unchanged).
"""
import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet

from .dense_policy_gradient import DenseInference, dense_pg_loss
from .pg_options import PGOptions, check_pg_options, pg_options_from_cfg
from .reward_memory import RewardMemory


@META_ARCH_REGISTRY.register()
class PGRetinaNet(RetinaNet):
    @configurable
    def __init__(self, *, pg: PGOptions = PGOptions(), **kwargs):
        """
        Args:
            pg: the MODEL.PG options; the rest are RetinaNet's arguments.
        """
        super().__init__(**kwargs)
        # explicit arguments are checked as the YAML path's (a sigmoid classifier is RetinaNet's)
        check_pg_options(pg.enabled, pg.gamma, pg.reward_scale, pg.settings, False,
                         dense=True)
        self.pg = pg
        # MODEL.PG.REWARD_SCOPE dataset's recent images (not in checkpoints: reward_memory.py)
        self.pg_reward_memory = RewardMemory(pg.settings.reward_memory_images)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # D's thresholds are RetinaNet's own attributes, passed at each loss call (DenseInference)
        ret["pg"] = pg_options_from_cfg(cfg)
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        if not self.pg.enabled:
            return super().forward_training(images, features, predictions, gt_instances)
        # RetinaNet.forward_training's steps, keeping what the PG term needs
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        losses = self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        logits = cat(pred_logits, dim=1)  # [N, R, K]
        pg_term = dense_pg_loss(
            torch.nn.functional.logsigmoid(logits), [x.sigmoid() for x in pred_logits],
            pred_anchor_deltas, anchors, gt_labels, gt_instances, images.image_sizes,
            self.box2box_transform,
            DenseInference(self.test_score_thresh, self.test_topk_candidates,
                           self.test_nms_thresh, self.max_detections_per_image),
            self.pg, self.loss_normalizer, reward_memory=self.pg_reward_memory,
        )
        losses["loss_cls"] = self.pg.gamma * losses["loss_cls"] + pg_term
        return losses
