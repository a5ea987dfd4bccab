"""The box predictor of pgdet: detectron2's FastRCNNOutputLayers with the policy-gradient loss.

Only the classification term changes (paper Algorithm 1: box regression keeps smooth-L1). With
``MODEL.PG.ENABLED`` it is the PG-weighted cross-entropy of SPEC §1 step 7,

    L_cls = (1/R) Σ_b w_b · CE(x_b, l_b),    w_b = detach(c·A_b + γ),

whose gradient on the true-class logit is ``(c·A_b + γ)(p_b − 1)``: eq. 10-11 and supplement
Appendix C. Normalised by the number R of sampled RoIs of the batch, like detectron2's own loss,
so with A = 0 and γ = 1 it is detectron2's cross-entropy and the learning rate means the same.
With ``MODEL.PG.UPDATE pairwise`` it is γ · CE plus c · the pairwise order loss of
:mod:`pgdet.modeling.pg.pairwise_update`, with the same normalisation.
At test time it runs greedy NMS (detectron2's) or, with ``MODEL.SOFT_NMS.ENABLED``, soft-NMS.
"""
import time
from dataclasses import replace
from typing import List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..comparators.soft_nms import check_soft_nms_config, fast_rcnn_inference_soft_nms
from .pairwise_update import log_pair_stats, pairwise_order_loss
from .pg_options import action_generator, check_pg_options, log_pg_stats, pg_options_from_cfg
from .policy_gradient import InferenceThresholds, PGSettings, compute_advantages
from .reward_memory import RewardMemory

# The Instances field by which ROI heads give the PG loss the detector's test-time class scores
# [R_i, K+1] of the RoIs when they are not this predictor's softmax (a cascade averages stages).
SCORES_FIELD = "pg_scores"


class NonFiniteOutputsError(FloatingPointError):
    """Non-finite box-predictor outputs; ``positions`` are the offending images' batch indices,
    which the Trainer turns into dataset image ids."""

    def __init__(self, message: str, positions: List[int]):
        super().__init__(message)
        self.positions = positions


def _check_finite(scores, proposal_deltas, proposals, iteration):
    """Stop on non-finite predictor outputs instead of letting them become silent zero weights."""
    finite = torch.isfinite(scores).all(dim=1) & torch.isfinite(proposal_deltas).all(dim=1)
    if bool(finite.all()):
        return
    bad = [
        i for i, ok in enumerate(finite.split([len(p) for p in proposals])) if not bool(ok.all())
    ]
    raise NonFiniteOutputsError(
        f"Non-finite box-predictor outputs at iteration {iteration} in the images at batch "
        f"positions {bad}.",
        bad,
    )


class PGFastRCNNOutputLayers(FastRCNNOutputLayers):
    """FastRCNNOutputLayers whose classification loss is the policy gradient of Rao et al.

    With PG on, :meth:`losses` needs, on each image's proposals, the attribute ``_pg_targets``
    (the image's full ground truth), which :class:`pgdet.modeling.PGROIHeads` attaches, and
    optionally the field ``pg_scores`` (:class:`pgdet.modeling.PGCascadeROIHeads` sets it).
    """

    @configurable
    def __init__(
        self,
        *args,
        pg_enabled: bool = False,
        pg_gamma: float = 1.0,
        pg_reward_scale: float = 1.0,
        pg_settings: PGSettings = PGSettings(),
        pg_seed: int = 0,
        soft_nms: dict = None,
        **kwargs,
    ):
        """
        Args beyond FastRCNNOutputLayers':
            pg_enabled: use the PG-weighted cross-entropy instead of plain cross-entropy.
            pg_gamma: γ of eq. 10, the weight of the cross-entropy term.
            pg_reward_scale: c of supplement Appendix C, the scale of the advantage.
            pg_settings: sampling, reward and baseline options (see PGSettings). The test-time
                thresholds of the baseline D are not among them: D is made with this layer's own
                ``test_score_thresh``, ``test_nms_thresh`` and ``test_topk_per_image``.
            pg_seed: base seed of the action sampling; the stream of an iteration is a function
                of (seed, iteration, rank), so runs are reproducible and resumable and every DDP
                process draws its own actions. < 0 ("random", as detectron2's SEED -1): one
                seed drawn here and shared by the processes.
            soft_nms: keyword options of fast_rcnn_inference_soft_nms, or None for greedy NMS.

        Both construction paths (``from_config`` for YAML, these arguments for a LazyConfig)
        are validated here by :func:`pgdet.modeling.pg.pg_options.check_pg_options`.
        """
        super().__init__(*args, **kwargs)
        pg_settings = replace(pg_settings, iou_thresholds=tuple(pg_settings.iou_thresholds))
        check_pg_options(pg_enabled, pg_gamma, pg_reward_scale, pg_settings, self.use_sigmoid_ce)
        self.pg_enabled = pg_enabled
        self.pg_gamma = pg_gamma
        self.pg_reward_scale = pg_reward_scale
        self.pg_settings = pg_settings
        self.pg_seed = pg_seed if pg_seed >= 0 else comm.shared_random_seed()
        # the recent training images of MODEL.PG.REWARD_SCOPE dataset: a plain attribute, so
        # not in checkpoints (pgdet/modeling/pg/reward_memory.py says why)
        self.pg_reward_memory = RewardMemory(pg_settings.reward_memory_images)
        self.soft_nms = soft_nms

    @classmethod
    def from_config(cls, cfg, input_shape):
        pg = pg_options_from_cfg(cfg)  # checks MODEL.PG (CASCADE_STAGES too); __init__ rechecks
        check_soft_nms_config(cfg)
        ret = super().from_config(cfg, input_shape)
        ret.update(
            pg_enabled=pg.enabled,
            pg_gamma=pg.gamma,
            pg_reward_scale=pg.reward_scale,
            pg_settings=pg.settings,
            pg_seed=pg.seed,
            soft_nms=None
            if not cfg.MODEL.SOFT_NMS.ENABLED
            else dict(
                method=cfg.MODEL.SOFT_NMS.METHOD,
                iou_thresh=cfg.MODEL.SOFT_NMS.IOU_THRESH,
                sigma=cfg.MODEL.SOFT_NMS.SIGMA,
                prune_thresh=cfg.MODEL.SOFT_NMS.SCORE_THRESH,
            ),
        )
        return ret

    def inference_thresholds(self) -> InferenceThresholds:
        """The thresholds :meth:`inference` uses now, for the baseline D of the loss."""
        return InferenceThresholds(
            self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image
        )

    def _generator(self, device, iteration: int) -> torch.Generator:
        """The random stream of one iteration on this process (see pg_seed)."""
        return action_generator(self.pg_seed, device, iteration)

    def losses(self, predictions, proposals: List[Instances]):
        if not self.pg_enabled:
            return super().losses(predictions, proposals)
        scores, proposal_deltas = predictions
        losses = super().losses(predictions, proposals)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        losses["loss_cls"] = self.pg_classification_loss(scores, proposal_deltas, proposals, gt_classes)
        losses["loss_cls"] = losses["loss_cls"] * self.loss_weight.get("loss_cls", 1.0)
        return losses

    def pg_classification_loss(self, scores, proposal_deltas, proposals, gt_classes):
        """The PG-weighted cross-entropy, ``mean_b w_b CE(x_b, l_b)`` over the batch's R RoIs;
        with UPDATE pairwise ``(γ Σ_b CE(x_b, l_b) + c Σ_pairs ℓ) / R`` instead.

        scores [R, K+1] logits; proposal_deltas [R, K*4]; gt_classes [R] (K = background).
        """
        storage = get_event_storage()
        _check_finite(scores, proposal_deltas, proposals, storage.iter)
        start = time.perf_counter()
        with torch.no_grad():
            probs = self._policy_probs(scores, proposals)
            boxes = self.predict_boxes((scores.detach(), proposal_deltas.detach()), proposals)
            num_per_image = [len(p) for p in proposals]
            pg = compute_advantages(
                list(probs.split(num_per_image)),
                list(boxes),
                proposals,
                [p._pg_targets for p in proposals],
                self.pg_settings,
                self._generator(scores.device, storage.iter),
                self.inference_thresholds(),
                self.pg_reward_memory,
            )
            if pg.order_pairs is None:
                weights = self.pg_reward_scale * pg.advantages + self.pg_gamma
            else:
                weights = torch.full_like(pg.advantages, self.pg_gamma)
        log_pg_stats(storage, pg, weights, time.perf_counter() - start)
        per_roi = F.cross_entropy(scores, gt_classes, reduction="none")
        loss = (weights * per_roi).sum()
        if pg.order_pairs is not None:
            log_pair_stats(storage, pg.order_pairs)
            loss = loss + self.pg_reward_scale * pairwise_order_loss(
                scores, pg.order_pairs, self.pg_settings.pairwise_margin)
        return loss / max(gt_classes.numel(), 1)

    @staticmethod
    def _policy_probs(scores, proposals: List[Instances]) -> torch.Tensor:
        """[R, K+1] the class scores the detector outputs at test time for the RoIs: the field
        ``pg_scores`` when the ROI heads set it (PGCascadeROIHeads: the stages' mean), else the
        softmax of this predictor's logits ``scores`` [R, K+1]."""
        if proposals and proposals[0].has(SCORES_FIELD):
            return cat([p.get(SCORES_FIELD) for p in proposals])
        return F.softmax(scores.detach(), dim=-1)

    def inference(self, predictions, proposals: List[Instances]):
        if self.soft_nms is None:
            return super().inference(predictions, proposals)
        return fast_rcnn_inference_soft_nms(
            self.predict_boxes(predictions, proposals),
            self.predict_probs(predictions, proposals),
            [x.image_size for x in proposals],
            self.test_score_thresh,
            self.test_topk_per_image,
            **self.soft_nms,
        )
