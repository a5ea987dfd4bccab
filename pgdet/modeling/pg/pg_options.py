"""What every detector family's PG loss shares besides the advantages: the MODEL.PG options read
from the config (and checked), the per-iteration random stream of the actions, and the logged
``pg/*`` scalars. The two-stage box predictor and the one-stage detectors both call these, so a
key means the same thing in each.
"""
from typing import NamedTuple

import torch
from detectron2.utils import comm

from ...config_error import raise_if_invalid
from .pairwise_update import PAIRWISE_MARGINS, UPDATES
from .policy_gradient import (ADVANTAGE_NORMS, BASELINES, REWARD_ESTIMATORS, REWARD_SCOPES,
                              PGSettings)

# the YAML meta-architectures whose classifier is per-class sigmoids (LazyConfig models are
# checked when built, by the detector's own check_pg_options call)
DENSE_META_ARCHITECTURES = ("PGRetinaNet",)
CASCADE_STAGES = ("last", "all")  # values of MODEL.PG.CASCADE_STAGES (PGCascadeROIHeads)


def check_pg_options(enabled: bool, gamma: float, reward_scale: float, settings: PGSettings,
                     use_sigmoid_ce: bool, dense: bool = False):
    """Fail at build time, naming the MODEL.PG key, when a PG option cannot work.

    On plain values, so every construction path runs it: :func:`check_pg_config` (a YAML
    config) and :class:`PGFastRCNNOutputLayers` on the arguments it is built with (a LazyConfig
    passes them explicitly; ``pg_<key>`` and ``PGSettings.<key>`` are MODEL.PG.<KEY> in lower
    case), so both paths fail with the same messages. ``dense``: a one-stage detector's
    (RetinaNet, FCOS: per-class sigmoids, no background logit).
    """
    problems = _pg_option_problems(enabled, gamma, reward_scale, settings, use_sigmoid_ce,
                                   dense=dense)
    raise_if_invalid("policy-gradient", problems)


def check_pg_config(cfg):
    """Fail at build time, naming the key, when a MODEL.PG option cannot work: the options of
    :func:`check_pg_options`, read from `cfg`, and MODEL.PG.CASCADE_STAGES."""
    pg = cfg.MODEL.PG
    raise_if_invalid("policy-gradient", _pg_option_problems(
        pg.ENABLED, pg.GAMMA, pg.REWARD_SCALE, _settings_from_cfg(cfg),
        cfg.MODEL.ROI_BOX_HEAD.get("USE_SIGMOID_CE", False), cascade_stages=pg.CASCADE_STAGES,
        dense=cfg.MODEL.META_ARCHITECTURE in DENSE_META_ARCHITECTURES,
    ))


def _pg_option_problems(enabled, gamma, reward_scale, settings: PGSettings, use_sigmoid_ce,
                        cascade_stages=None, dense=False):
    """The messages of the invalid options (CASCADE_STAGES checked when given, in its place)."""
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
    if settings.reward_scope not in REWARD_SCOPES:
        problems.append(
            f"MODEL.PG.REWARD_SCOPE must be one of {REWARD_SCOPES}, got {settings.reward_scope!r}"
        )
    memory = settings.reward_memory_images
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        problems.append("MODEL.PG.REWARD_MEMORY_IMAGES must be an integer >= 0 (past training "
                        f"images in the dataset reward), got {memory!r}")
    problems += _update_problems(settings, dense)
    if cascade_stages is not None and cascade_stages not in CASCADE_STAGES:
        problems.append(
            f"MODEL.PG.CASCADE_STAGES must be one of {CASCADE_STAGES}, got {cascade_stages!r}"
        )
    if settings.suppressor_credit and estimator != "swap":
        problems.append("MODEL.PG.SUPPRESSOR_CREDIT moves the box that suppressed a swapped "
                        "candidate: it needs MODEL.PG.REWARD_ESTIMATOR swap")
    if estimator == "reinforce" and settings.num_samples < 2:
        problems.append("MODEL.PG.REWARD_ESTIMATOR reinforce compares actions with and without "
                        f"each box: MODEL.PG.NUM_SAMPLES must be >= 2, got {settings.num_samples}")
    if estimator == "joint" and settings.baseline == "sampled_mean":
        problems.append("MODEL.PG.REWARD_ESTIMATOR joint with MODEL.PG.BASELINE sampled_mean "
                        "gives no box a positive advantage (it subtracts the mean of all k "
                        "rewards from the sum over b's actions only): use BASELINE nms, or "
                        "REWARD_ESTIMATOR conditional")
    if estimator == "swap" and settings.baseline != "nms":
        problems.append("MODEL.PG.REWARD_ESTIMATOR swap samples no actions to average: use "
                        "MODEL.PG.BASELINE nms (r' = AP of the NMS result it swaps boxes into)")
    if enabled and use_sigmoid_ce:
        problems.append("MODEL.PG.ENABLED needs softmax scores: set MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False")
    return problems


def _update_problems(settings: PGSettings, dense: bool):
    """The messages of MODEL.PG.UPDATE and the options it cannot combine with (``dense``: a
    one-stage detector's)."""
    if settings.update not in UPDATES:
        return [f"MODEL.PG.UPDATE must be one of {UPDATES}, got {settings.update!r}"]
    max_pairs = settings.pairwise_max_pairs
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 0:
        return ["MODEL.PG.PAIRWISE_MAX_PAIRS must be an integer >= 0 (false-positive / "
                f"true-positive pairs per image), got {max_pairs!r}"]
    opponents = settings.pairwise_memory_opponents
    if isinstance(opponents, bool) or not isinstance(opponents, int) or opponents < 0:
        return ["MODEL.PG.PAIRWISE_MEMORY_OPPONENTS must be an integer >= 0 (memory detections "
                f"paired with each box of D), got {opponents!r}"]
    if opponents and (settings.update != "pairwise" or settings.reward_scope != "dataset"
                      or settings.reward_memory_images == 0):
        return ["MODEL.PG.PAIRWISE_MEMORY_OPPONENTS pairs D's boxes with the reward memory's "
                "detections: it needs MODEL.PG.UPDATE pairwise, MODEL.PG.REWARD_SCOPE dataset "
                "and MODEL.PG.REWARD_MEMORY_IMAGES > 0"]
    if settings.pairwise_margin not in PAIRWISE_MARGINS:
        return [f"MODEL.PG.PAIRWISE_MARGIN must be one of {PAIRWISE_MARGINS}, got "
                f"{settings.pairwise_margin!r}"]
    if settings.pairwise_margin != "log_odds" and (settings.update != "pairwise" or dense):
        return ["MODEL.PG.PAIRWISE_MARGIN background compares a two-stage RoI's class logit with "
                "its background logit: it needs MODEL.PG.UPDATE pairwise and a softmax box head "
                "(a one-stage detector's sigmoid has no background logit)"]
    if settings.update != "pairwise":
        return []
    problems = []
    if settings.reward_estimator != "swap":
        problems.append("MODEL.PG.UPDATE pairwise takes a candidate's ΔAP from the swap sets: "
                        "set MODEL.PG.REWARD_ESTIMATOR swap")
    unused = [key for key, on in (("KEPT_BOX_CREDIT", settings.kept_box_credit),
                                  ("SUPPRESSOR_CREDIT", settings.suppressor_credit),
                                  ("ADVANTAGE_NORM", settings.advantage_norm != "none")) if on]
    if unused:
        problems.append(f"MODEL.PG.{', '.join(unused)} shape(s) the advantages, which "
                        "MODEL.PG.UPDATE pairwise does not use: leave them at their defaults")
    return problems


def _settings_from_cfg(cfg) -> PGSettings:
    """MODEL.PG's PGSettings (no thresholds: D's are the detector's own, see PGSettings)."""
    pg = cfg.MODEL.PG
    return PGSettings(
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
        reward_scope=pg.REWARD_SCOPE,
        reward_memory_images=pg.REWARD_MEMORY_IMAGES,
        update=pg.UPDATE,
        pairwise_max_pairs=pg.PAIRWISE_MAX_PAIRS,
        pairwise_memory_opponents=pg.PAIRWISE_MEMORY_OPPONENTS,
        pairwise_margin=pg.PAIRWISE_MARGIN,
    )


class PGOptions(NamedTuple):
    """MODEL.PG as plain values (what a detector's ``from_config`` hands its ``__init__``)."""

    enabled: bool = False
    gamma: float = 1.0  # γ of eq. 10, the weight of the detector's own classification loss
    reward_scale: float = 1.0  # c of supplement Appendix C, the scale of the advantage
    settings: PGSettings = PGSettings()
    # base seed of the action sampling; the stream of an iteration is a function of (seed,
    # iteration, rank), so runs are reproducible and resumable and every DDP process draws its own
    seed: int = 0


def pg_options_from_cfg(cfg) -> PGOptions:
    """MODEL.PG, checked. The test-time thresholds of D are not among the options: each
    detector passes its own inference attributes at every loss call (InferenceThresholds for
    the box predictor, DenseInference for RetinaNet), so they cannot drift from its inference."""
    check_pg_config(cfg)
    pg = cfg.MODEL.PG
    return PGOptions(
        enabled=pg.ENABLED,
        gamma=pg.GAMMA,
        reward_scale=pg.REWARD_SCALE,
        settings=_settings_from_cfg(cfg),
        # SEED < 0 means "random" in detectron2: the Trainer resolves it to the run's drawn
        # seed before building the model; a model built elsewhere draws its own.
        seed=cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
    )


def action_generator(seed: int, device, iteration: int) -> torch.Generator:
    """The random stream of the actions of one iteration on this process."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + iteration) * 1_009 + comm.get_rank())
    return gen


def log_pg_stats(storage, pg, weights, seconds):
    """Per-iteration PG statistics for the console, metrics.json and TensorBoard.

    pg: the PGAdvantages of the batch; weights: the weights c·A + γ of the loss terms.
    ``pg/absent_class_advantage_frac``: of the slots with a nonzero advantage, the share holding
    a box of D whose class has no GT in its image.
    """
    if pg.baseline_reward.numel():
        storage.put_scalar("pg/baseline_reward", pg.baseline_reward.mean().item())
        sampled = pg.sampled_reward[~pg.sampled_reward.isnan()]  # swap: images with candidates
        if sampled.numel():
            storage.put_scalar("pg/sampled_reward", sampled.mean().item())
    if pg.candidate_mask.any():
        storage.put_scalar(
            "pg/positive_advantage_frac",
            (pg.advantages[pg.candidate_mask] > 0).float().mean().item(),
        )
    nonzero = pg.candidate_mask & (pg.advantages != 0)
    if pg.absent_class_mask is not None and nonzero.any():
        # the share of the signal that the paper's per-image reward cannot give (always 0 there)
        storage.put_scalar("pg/absent_class_advantage_frac",
                           pg.absent_class_mask[nonzero].float().mean().item())
    if weights.numel():
        storage.put_scalar("pg/mean_weight", weights.mean().item())
        storage.put_scalar("pg/negative_weight_frac", (weights < 0).float().mean().item())
    storage.put_scalar("pg/reward_time", seconds, smoothing_hint=True)
