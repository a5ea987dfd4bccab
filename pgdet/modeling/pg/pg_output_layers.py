"""The box predictor of pgdet: detectron2's FastRCNNOutputLayers with the policy-gradient loss.

Only the classification term changes (paper Algorithm 1: box regression keeps smooth-L1). With
``MODEL.PG.ENABLED`` it is the PG-weighted cross-entropy of SPEC §1 step 7,

    L_cls = (1/R) Σ_b w_b · CE(x_b, l_b),    w_b = detach(c·A_b + γ),

whose gradient on the true-class logit is ``(c·A_b + γ)(p_b − 1)``: eq. 10-11 and supplement
Appendix C. Normalised by the number R of sampled RoIs of the batch, like detectron2's own loss,
so with A = 0 and γ = 1 it is detectron2's cross-entropy and the learning rate means the same.
At test time it runs greedy NMS (detectron2's) or, with ``MODEL.SOFT_NMS.ENABLED``, soft-NMS.
"""
import time
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
from .policy_gradient import (
    ADVANTAGE_NORMS, BASELINES, REWARD_ESTIMATORS, PGSettings, compute_advantages,
)

CASCADE_STAGES = ("last", "all")
# The Instances field by which ROI heads give the PG loss the detector's test-time class scores
# [R_i, K+1] of the RoIs when they are not this predictor's softmax (a cascade averages stages).
SCORES_FIELD = "pg_scores"


def check_pg_config(cfg):
    """Fail at build time, naming the key, when a MODEL.PG option cannot work."""
    pg = cfg.MODEL.PG
    problems = []
    if pg.NUM_SAMPLES < 1:
        problems.append(f"MODEL.PG.NUM_SAMPLES must be >= 1 (k actions per image), got {pg.NUM_SAMPLES}")
    if pg.GAMMA < 0:
        problems.append(f"MODEL.PG.GAMMA must be >= 0 (weight of cross-entropy), got {pg.GAMMA}")
    if pg.REWARD_SCALE < 0:
        problems.append(f"MODEL.PG.REWARD_SCALE must be >= 0, got {pg.REWARD_SCALE}")
    if len(pg.IOU_THRESHOLDS) == 0 or not all(0 < t <= 1 for t in pg.IOU_THRESHOLDS):
        problems.append(
            f"MODEL.PG.IOU_THRESHOLDS must be a non-empty list of values in (0, 1], "
            f"got {list(pg.IOU_THRESHOLDS)}"
        )
    if pg.MAX_DETECTIONS < 1:
        problems.append(f"MODEL.PG.MAX_DETECTIONS must be >= 1, got {pg.MAX_DETECTIONS}")
    if pg.REWARD_ESTIMATOR not in REWARD_ESTIMATORS:
        problems.append(
            f"MODEL.PG.REWARD_ESTIMATOR must be one of {REWARD_ESTIMATORS}, got {pg.REWARD_ESTIMATOR!r}"
        )
    if pg.BASELINE not in BASELINES:
        problems.append(f"MODEL.PG.BASELINE must be one of {BASELINES}, got {pg.BASELINE!r}")
    if pg.ADVANTAGE_NORM not in ADVANTAGE_NORMS:
        problems.append(
            f"MODEL.PG.ADVANTAGE_NORM must be one of {ADVANTAGE_NORMS}, got {pg.ADVANTAGE_NORM!r}"
        )
    if pg.CASCADE_STAGES not in CASCADE_STAGES:
        problems.append(
            f"MODEL.PG.CASCADE_STAGES must be one of {CASCADE_STAGES}, got {pg.CASCADE_STAGES!r}"
        )
    if pg.SUPPRESSOR_CREDIT and pg.REWARD_ESTIMATOR != "swap":
        problems.append("MODEL.PG.SUPPRESSOR_CREDIT moves the box that suppressed a swapped "
                        "candidate: it needs MODEL.PG.REWARD_ESTIMATOR swap")
    if pg.REWARD_ESTIMATOR == "reinforce" and pg.NUM_SAMPLES < 2:
        problems.append("MODEL.PG.REWARD_ESTIMATOR reinforce compares actions with and without "
                        f"each box: MODEL.PG.NUM_SAMPLES must be >= 2, got {pg.NUM_SAMPLES}")
    if pg.REWARD_ESTIMATOR == "swap" and pg.BASELINE != "nms":
        problems.append("MODEL.PG.REWARD_ESTIMATOR swap samples no actions to average: use "
                        "MODEL.PG.BASELINE nms (r' = AP of the NMS result it swaps boxes into)")
    if pg.ENABLED and cfg.MODEL.ROI_BOX_HEAD.get("USE_SIGMOID_CE", False):
        problems.append("MODEL.PG.ENABLED needs softmax scores: set MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False")
    if problems:
        raise ValueError("Invalid policy-gradient config:\n  " + "\n  ".join(problems))


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
            pg_settings: sampling, reward and baseline options (see PGSettings).
            pg_seed: base seed of the action sampling; the stream of an iteration is a function
                of (seed, iteration, rank), so runs are reproducible and resumable and every DDP
                process draws its own actions.
            soft_nms: keyword options of fast_rcnn_inference_soft_nms, or None for greedy NMS.
        """
        super().__init__(*args, **kwargs)
        self.pg_enabled = pg_enabled
        self.pg_gamma = pg_gamma
        self.pg_reward_scale = pg_reward_scale
        self.pg_settings = pg_settings
        self.pg_seed = pg_seed
        self.soft_nms = soft_nms
        if pg_enabled and self.use_sigmoid_ce:
            raise ValueError("The policy gradient needs softmax scores (USE_SIGMOID_CE False)")

    @classmethod
    def from_config(cls, cfg, input_shape):
        check_pg_config(cfg)
        check_soft_nms_config(cfg)
        ret = super().from_config(cfg, input_shape)
        pg = cfg.MODEL.PG
        ret.update(
            pg_enabled=pg.ENABLED,
            pg_gamma=pg.GAMMA,
            pg_reward_scale=pg.REWARD_SCALE,
            pg_settings=PGSettings(
                num_samples=pg.NUM_SAMPLES,
                reward_estimator=pg.REWARD_ESTIMATOR,
                sample_nms=pg.SAMPLE_NMS,
                baseline=pg.BASELINE,
                iou_thresholds=tuple(pg.IOU_THRESHOLDS),
                max_detections=pg.MAX_DETECTIONS,
                test_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
                test_nms_thresh=cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
                include_gt_proposals=pg.INCLUDE_GT_PROPOSALS,
                kept_box_credit=pg.KEPT_BOX_CREDIT,
                suppressor_credit=pg.SUPPRESSOR_CREDIT,
                advantage_norm=pg.ADVANTAGE_NORM,
            ),
            # SEED < 0 means "random" in detectron2: the Trainer resolves it to the run's drawn
            # seed before building the model; a model built elsewhere draws its own.
            pg_seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
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

    def _generator(self, device, iteration: int) -> torch.Generator:
        """The random stream of one iteration on this process (see pg_seed)."""
        gen = torch.Generator(device=device)
        gen.manual_seed((self.pg_seed * 1_000_003 + iteration) * 1_009 + comm.get_rank())
        return gen

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
        """The PG-weighted cross-entropy, ``mean_b w_b CE(x_b, l_b)`` over the batch's R RoIs.

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
            )
            weights = self.pg_reward_scale * pg.advantages + self.pg_gamma
        self._log_pg_stats(storage, pg, weights, time.perf_counter() - start)
        per_roi = F.cross_entropy(scores, gt_classes, reduction="none")
        return (weights * per_roi).sum() / max(gt_classes.numel(), 1)

    @staticmethod
    def _policy_probs(scores, proposals: List[Instances]) -> torch.Tensor:
        """[R, K+1] the class scores the detector outputs at test time for the RoIs: the field
        ``pg_scores`` when the ROI heads set it (PGCascadeROIHeads: the stages' mean), else the
        softmax of this predictor's logits ``scores`` [R, K+1]."""
        if proposals and proposals[0].has(SCORES_FIELD):
            return cat([p.get(SCORES_FIELD) for p in proposals])
        return F.softmax(scores.detach(), dim=-1)

    @staticmethod
    def _log_pg_stats(storage, pg, weights, seconds):
        """Per-iteration PG statistics for the console, metrics.json and TensorBoard."""
        if pg.baseline_reward.numel():
            storage.put_scalar("pg/baseline_reward", pg.baseline_reward.mean().item())
            storage.put_scalar("pg/sampled_reward", pg.sampled_reward.mean().item())
        if pg.candidate_mask.any():
            storage.put_scalar(
                "pg/positive_advantage_frac",
                (pg.advantages[pg.candidate_mask] > 0).float().mean().item(),
            )
        if weights.numel():
            storage.put_scalar("pg/mean_weight", weights.mean().item())
            storage.put_scalar("pg/negative_weight_frac", (weights < 0).float().mean().item())
        storage.put_scalar("pg/reward_time", seconds, smoothing_hint=True)

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
