"""pgdet's FCOS: detectron2's FCOS with the policy-gradient classification loss.

As :class:`~pgdet.modeling.pg.pg_retinanet.PGRetinaNet` (derivation in
:mod:`pgdet.modeling.pg.dense_policy_gradient`), only training changes, and only
``loss_fcos_cls``: ``γ · focal loss + c · PG term``, over FCOS's normaliser; the box (GIoU) and
centerness losses and inference are detectron2's. Candidates are the positive anchor points
(FCOS ignores none), each with its ground-truth class and its decoded box.

What differs from RetinaNet is that FCOS ranks its detections by a score that is not the class
probability: ``sqrt(σ(x[a, c]) · σ(centerness[a]))`` (FCOS v2, eq. 4). So the two roles that
RetinaNet's σ(x) plays are split:

- D, and hence r', is FCOS's test-time output, so it ranks, thresholds (0.2), NMSes and caps
  with the centerness-weighted scores: r' is the AP that inference would get;
- the policy, the Bernoulli whose log-probability the PG term differentiates, is
  ``p_b = σ(x[b, l_b])``, because the class logit is the one that the focal loss trains towards
  l_b and that eq. 11's factor (p_b − 1) belongs to; the sampled actions draw their candidates
  with it. The centerness is a shared per-point factor, trained by its own BCE only: the PG
  term gives it no gradient;
- wherever a candidate meets D's boxes — NMS suppression, its rank inside every swapped or
  sampled set, the cap — it carries its own test-time score sqrt(p_b · σ(ctr_b)), the scale of
  D's scores (``PGImage.cand_rank_scores``).

FCOS is a LazyConfig-only model in detectron2 (no META_ARCH_REGISTRY entry, no yacs keys), so
the PG options are an explicit constructor argument, checked as the YAML path checks MODEL.PG.
With ``pg.enabled`` False it is detectron2's FCOS, and its checkpoints load unchanged.
"""
import torch
from detectron2.layers import cat
from detectron2.modeling.meta_arch.fcos import FCOS

from .dense_policy_gradient import DenseInference, dense_pg_loss
from .pg_options import PGOptions, check_pg_options
from .reward_memory import RewardMemory


class PGFCOS(FCOS):
    def __init__(self, *, pg: PGOptions = PGOptions(), **kwargs):
        """
        Args:
            pg: the policy-gradient options (MODEL.PG of the YAML path); the rest are FCOS's
                arguments.
        """
        super().__init__(**kwargs)
        check_pg_options(pg.enabled, pg.gamma, pg.reward_scale, pg.settings, False,
                         dense=True)
        self.pg = pg
        # MODEL.PG.REWARD_SCOPE dataset's recent images (not in checkpoints: reward_memory.py)
        self.pg_reward_memory = RewardMemory(pg.settings.reward_memory_images)

    def forward_training(self, images, features, predictions, gt_instances):
        if not self.pg.enabled:
            return super().forward_training(images, features, predictions, gt_instances)
        # FCOS.forward_training's steps, keeping what the PG term needs; per level [N, A_l, *]
        pred_logits, pred_anchor_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        losses = self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes,
                             pred_centerness)
        policy = [x.sigmoid() for x in pred_logits]  # [N, A_l, K]
        # FCOS.forward_inference's scores ([N, A_l, 1] centerness broadcast over the classes)
        scores = [torch.sqrt(p * c.sigmoid()) for p, c in zip(policy, pred_centerness)]
        pg_term = dense_pg_loss(
            torch.nn.functional.logsigmoid(cat(pred_logits, dim=1)), scores, pred_anchor_deltas,
            anchors, gt_labels, gt_instances, images.image_sizes, self.box2box_transform,
            DenseInference(self.test_score_thresh, self.test_topk_candidates,
                           self.test_nms_thresh, self.max_detections_per_image),
            self.pg, self.loss_normalizer, policy=policy, reward_memory=self.pg_reward_memory,
        )
        losses["loss_fcos_cls"] = self.pg.gamma * losses["loss_fcos_cls"] + pg_term
        return losses
