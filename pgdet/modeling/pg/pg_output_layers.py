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
from .policy_gradient import (
    ADVANTAGE_NORMS, BASELINES, REWARD_ESTIMATORS, InferenceThresholds, PGSettings,
    compute_advantages,
)


def check_pg_options(enabled: bool, gamma: float, reward_scale: float, settings: PGSettings,
                     use_sigmoid_ce: bool):
    """Fail at build time, naming the MODEL.PG key, when a PG option cannot work.

    Called by :class:`PGFastRCNNOutputLayers` on the values it is built with, so a YAML config
    (through ``from_config``) and a LazyConfig (explicit arguments; ``pg_<key>`` and
    ``PGSettings.<key>`` are MODEL.PG.<KEY> in lower case) fail with the same messages.
    """
    problems = []
    if settings.num_samples < 1:
        problems.append(f"MODEL.PG.NUM_SAMPLES must be >= 1 (k actions per image), got {settings.num_samples}")
    if gamma < 0:
        problems.append(f"MODEL.PG.GAMMA must be >= 0 (weight of cross-entropy), got {gamma}")
    if reward_scale < 0:
        problems.append(f"MODEL.PG.REWARD_SCALE must be >= 0, got {reward_scale}")
    thresholds = settings.iou_thresholds
    if len(thresholds) == 0 or not all(0 < t <= 1 for t in thresholds):
        problems.append(
            f"MODEL.PG.IOU_THRESHOLDS must be a non-empty list of values in (0, 1], "
            f"got {list(thresholds)}"
        )
    if settings.max_detections < 1:
        problems.append(f"MODEL.PG.MAX_DETECTIONS must be >= 1, got {settings.max_detections}")
    estimator = settings.reward_estimator
    if estimator not in REWARD_ESTIMATORS:
        problems.append(
            f"MODEL.PG.REWARD_ESTIMATOR must be one of {REWARD_ESTIMATORS}, got {estimator!r}"
        )
    if settings.baseline not in BASELINES:
        problems.append(f"MODEL.PG.BASELINE must be one of {BASELINES}, got {settings.baseline!r}")
    if settings.advantage_norm not in ADVANTAGE_NORMS:
        problems.append(
            f"MODEL.PG.ADVANTAGE_NORM must be one of {ADVANTAGE_NORMS}, got {settings.advantage_norm!r}"
        )
    if settings.suppressor_credit and estimator != "swap":
        problems.append("MODEL.PG.SUPPRESSOR_CREDIT moves the box that suppressed a swapped "
                        "candidate: it needs MODEL.PG.REWARD_ESTIMATOR swap")
    if estimator == "reinforce" and settings.num_samples < 2:
        problems.append("MODEL.PG.REWARD_ESTIMATOR reinforce compares actions with and without "
                        f"each box: MODEL.PG.NUM_SAMPLES must be >= 2, got {settings.num_samples}")
    if estimator == "swap" and settings.baseline != "nms":
        problems.append("MODEL.PG.REWARD_ESTIMATOR swap samples no actions to average: use "
                        "MODEL.PG.BASELINE nms (r' = AP of the NMS result it swaps boxes into)")
    if enabled and use_sigmoid_ce:
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
    (the image's full ground truth), which :class:`pgdet.modeling.PGROIHeads` attaches.
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
        are validated here by :func:`check_pg_options`.
        """
        super().__init__(*args, **kwargs)
        pg_settings = replace(pg_settings, iou_thresholds=tuple(pg_settings.iou_thresholds))
        check_pg_options(pg_enabled, pg_gamma, pg_reward_scale, pg_settings, self.use_sigmoid_ce)
        self.pg_enabled = pg_enabled
        self.pg_gamma = pg_gamma
        self.pg_reward_scale = pg_reward_scale
        self.pg_settings = pg_settings
        self.pg_seed = pg_seed if pg_seed >= 0 else comm.shared_random_seed()
        self.soft_nms = soft_nms

    @classmethod
    def from_config(cls, cfg, input_shape):
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
                include_gt_proposals=pg.INCLUDE_GT_PROPOSALS,
                kept_box_credit=pg.KEPT_BOX_CREDIT,
                suppressor_credit=pg.SUPPRESSOR_CREDIT,
                advantage_norm=pg.ADVANTAGE_NORM,
            ),
            # SEED < 0 means "random" in detectron2: the Trainer resolves it to the run's drawn
            # seed before building the model; a model built elsewhere draws its own (__init__).
            pg_seed=cfg.SEED,
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
            probs = F.softmax(scores.detach(), dim=-1)
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
            )
            weights = self.pg_reward_scale * pg.advantages + self.pg_gamma
        self._log_pg_stats(storage, pg, weights, time.perf_counter() - start)
        per_roi = F.cross_entropy(scores, gt_classes, reduction="none")
        return (weights * per_roi).sum() / max(gt_classes.numel(), 1)

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
