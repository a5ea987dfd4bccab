"""Per-box advantages of the policy-gradient classification loss (paper §3.3, SPEC §1 steps 1-9).

For each image of a training batch this module turns the box predictor's outputs on the sampled
RoIs into one advantage per RoI, ``A_b = r(b) - r'``:

1. the *baseline* detections D: detectron2's test-time inference (score threshold, class-wise
   NMS, top-N, at the box predictor's own thresholds: :class:`InferenceThresholds`) on the same
   RoIs, scored with the per-image COCO AP -> ``r'`` (eq. 9);
2. the *candidates*: foreground RoIs, each with its ground-truth class ``l_b`` (eq. 7), the box
   decoded for that class, and its probability ``p_b``;
3. k *actions*: each candidate kept independently with probability ``p_b`` (Bernoulli), capped
   to the N_bb highest scores (eq. 3), optionally class-wise NMS'd; each scored -> ``r(a_j)``.
   NMS and the cap only decide what an action's detection set is, hence its reward; whether b
   is "in action j" for the estimators below is the raw Bernoulli draw, the random variable
   whose log-probability the policy gradient differentiates;
4. ``r(b)`` from the k rewards (``joint``: the paper's Monte-Carlo estimate of
   Σ_a p(a) r(a) δ(a,b); ``conditional``: mean reward of the actions containing b); or, with
   ``swap``, no sampling: r(b) = AP of D with b in place of the box that suppressed it in NMS
   (D ∪ {b} if none did), the counterfactual behind the paper's "boxes that have higher IoU
   with ground truth boxes than selected ones will get positive rewards" (§3.3);
5. ``A_b = r(b) - r'``, zero for RoIs that D already selected (same RoI and class), for
   background RoIs, and for images without ground truth.

``reinforce`` is the policy's exact gradient instead of the paper's r(b). With independent
Bernoulli selections, P(a) = Π_b p_b^[b∈a] (1 − p_b)^[b∉a], the expected reward is, for every b,

    E[r] = p_b · E[r | b ∈ a] + (1 − p_b) · E[r | b ∉ a],

so ∂E[r]/∂p_b = E[r | b ∈ a] − E[r | b ∉ a] =: Δ_b, and through the softmax
(∂p_b/∂x_{b,l_b} = p_b(1 − p_b)) ∂E[r]/∂x_{b,l_b} = p_b (1 − p_b) Δ_b. The loss's weighted
cross-entropy has gradient ``w_b (p_b − 1)`` on that logit, so gradient descent ascends E[r]
exactly when ``w_b = c · p_b · Δ_b``: ``A_b = p_b Δ_b``, with Δ_b estimated by the difference of
the mean rewards of the k actions with and without b (0 when all or none hold b). It needs no
baseline r' (a constant cancels in Δ_b) and applies to every candidate, also those in D: all are
drawn. The paper's joint estimate is ≈ p_b E[r | b ∈ a] − r', which lacks the E[r | b ∉ a] term:
the reason its advantage mostly measures confidence (benchmarks/RESULTS.md §7).

Options beyond the paper (``MODEL.PG.*``, all off by default):

- ground-truth boxes that detectron2 appends to the proposals in training
  (``PROPOSAL_APPEND_GT``) are left out of D, of the candidates and of every set (by default;
  ``INCLUDE_GT_PROPOSALS`` restores the old behaviour): they decode to near-perfect boxes that do
  not exist at test time, so they would raise r' above what inference gets and, under ``swap``,
  suppress the real candidates of their object. They keep the weight γ of every other RoI;
- ``KEPT_BOX_CREDIT``: leave-one-out credit Δ_d = r(D) − r(D ∖ {d}) for every box d that NMS
  kept, including duplicates and false positives on background RoIs (the paper's zero);
- ``SUPPRESSOR_CREDIT`` (``swap``): when b should replace its suppressor s (A_b > 0), s gets
  −A_b, so both sides of the NMS mistake move;
- ``ADVANTAGE_NORM image_max``: each image's advantages divided by their largest magnitude, so
  |A| <= 1 whatever the dataset (images with one object, whose AP moves in steps of 1, do not
  dominate) and ``c < γ`` keeps every weight c·A + γ positive;
- ``REWARD_SCOPE dataset``: every set scored by the COCO AP of a dataset (the last
  ``REWARD_MEMORY_IMAGES`` training images and the batch) instead of its image's AP, so that a
  detection of a class absent from its image is no longer worth exactly 0
  (:mod:`pgdet.modeling.pg.dataset_reward`);
- ``UPDATE pairwise``: besides the advantages, the pairs of boxes whose order decides AP, each
  with the exact change of the reward when their order is exchanged: a candidate and its
  suppressor (the ``swap`` sets), and a false positive of D above a true positive of its class
  (sets of D with the two scores exchanged, scored in the same reward call)
  (:mod:`pgdet.modeling.pg.pairwise_update`).

A credit for a kept box d is the change in AP from *having* d with its detected class; the loss
acts on the RoI's cross-entropy towards its label l, so it enters with sign +1 when d's class
is l (raising the CE weight raises d's score) and −1 otherwise (the CE pushes d's class down).

The detector-agnostic part is :func:`advantages_of_images`: it takes, per image, D and the
candidates, each tied to a *slot* (the loss term its advantage weights: a RoI's cross-entropy
here, an (anchor, class) logit in ``dense_policy_gradient``), and returns advantages per slot.
:func:`compute_advantages` builds those inputs for a two-stage detector's sampled RoIs.

All sets of all images are scored by one call of :func:`pgdet.modeling.pg.reward.image_ap`, over a
per-image *pool* (D's boxes followed by the candidates' boxes) with a membership mask, so IoUs
with the ground truth are computed once per image and the sequential part of COCO matching runs
once for the whole batch.

Everything here runs without gradient, on the logits' device. Host synchronisations per batch
are a fixed number (the sizes used for padding, the NMS of detectron2's inference), independent
of the number of boxes.
"""
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence

import torch
from detectron2.layers import batched_nms
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou

from .dataset_reward import dataset_ap
from .pairwise_update import (MemoryPairs, OrderPairs, base_matching, exchanged_scores,
                              memory_pairs, misordered_pairs, rescored_pool, rescored_sets)
from .reward import COCO_IOU_THRESHOLDS, image_ap, match_sets
from .reward_memory import RewardMemory, ScoredDetections

REWARD_ESTIMATORS = ("joint", "conditional", "reinforce", "swap")
BASELINES = ("nms", "sampled_mean")
ADVANTAGE_NORMS = ("none", "image_max")
REWARD_SCOPES = ("image", "dataset")  # values of MODEL.PG.REWARD_SCOPE
# The Instances field PGROIHeads sets on sampled RoIs: True for a ground-truth box that
# detectron2 appended to the proposals (MODEL.ROI_HEADS.PROPOSAL_APPEND_GT).
FROM_GT_FIELD = "pg_from_gt"


@dataclass
class PGSettings:
    """The PG hyper-parameters: MODEL.PG.<FIELD IN UPPER CASE> (pgdet/config.py), except
    ENABLED, GAMMA and REWARD_SCALE, which the box predictor applies itself."""

    num_samples: int = 10
    reward_estimator: str = "joint"
    sample_nms: bool = False
    baseline: str = "nms"
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS
    max_detections: int = 100
    include_gt_proposals: bool = False
    kept_box_credit: bool = False
    suppressor_credit: bool = False
    advantage_norm: str = "none"
    reward_scope: str = "image"
    reward_memory_images: int = 500
    update: str = "weighted_ce"
    pairwise_max_pairs: int = 256
    pairwise_memory_opponents: int = 0
    pairwise_margin: str = "log_odds"


@dataclass(frozen=True)
class InferenceThresholds:
    """detectron2's test-time inference that makes D and decides NMS suppression: the box
    predictor's own ``test_score_thresh``, ``test_nms_thresh`` and ``test_topk_per_image``.

    Not part of PGSettings on purpose: :class:`PGFastRCNNOutputLayers` builds it from the
    attributes its inference uses at every loss call, so r' scores exactly what inference
    outputs and no second copy of the thresholds can drift from them (defaults: detectron2's).
    """

    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    topk_per_image: int = 100


@dataclass
class PGAdvantages:
    """Outputs of :func:`compute_advantages` for a batch of R RoIs over B images.

    advantages:      [R] float, ``A_b`` per sampled RoI (0 where the method has no estimate).
    baseline_reward: [B'] float, ``r'`` of each image with ground truth (B' <= B).
    sampled_reward:  [B', k] float, ``r(a_j)`` of each action of those images; with ``swap``
                     [B', 1], the mean reward of the image's swapped sets (NaN for an image
                     without candidates, which has none: averages skip it).
    candidate_mask:  [R] bool, the RoIs whose advantage the method estimates (foreground RoIs
                     not selected by D; with the credit options also D's RoIs and suppressors).
    absent_class_mask: [R] bool, the RoIs holding a box of D whose class has no GT in its
                     image (``pg/absent_class_advantage_frac``); None: not computed.
    order_pairs:     with ``update`` pairwise, the pairs whose order decides AP, slots indexed
                     over the batch (:class:`OrderPairs`); None otherwise.
    """

    advantages: torch.Tensor
    baseline_reward: torch.Tensor
    sampled_reward: torch.Tensor
    candidate_mask: torch.Tensor
    absent_class_mask: Optional[torch.Tensor] = None
    order_pairs: Optional[OrderPairs] = None


class PGImage(NamedTuple):
    """One image's inputs to the reward, whatever the detector (SPEC §1 steps 2-3).

    A *slot* is one term the loss can weight: a sampled RoI of a two-stage detector (its
    cross-entropy towards its label), an (anchor, class) logit of a one-stage one. The reward
    only needs, per image, D and the candidates with the slot each belongs to.

    Two roles that one number plays in a two-stage detector are separate fields, because a
    detector may split them: the policy p_b (the Bernoulli draws, the ``reinforce`` factor) and
    the test-time score that ranks b against D's boxes (NMS suppression, order inside every set,
    the detection cap): FCOS ranks by sqrt(p_b · centerness). Likewise the boxes that NMS
    compared and the boxes the reward scores: dense detectors run NMS before clipping.
    """

    num_slots: int
    base: Instances  # D: pred_boxes [|D|] as scored (clipped), scores, pred_classes
    base_slot: torch.Tensor  # [|D|] long, the slot of each box of D
    base_sign: torch.Tensor  # [|D|] +1 where raising the slot's term raises the box's score
    cand_slot: torch.Tensor  # [C] long, the slot of each candidate
    cand_classes: torch.Tensor  # [C] long, l_b
    cand_scores: torch.Tensor  # [C] p_b, the policy's probability of keeping b
    cand_boxes: torch.Tensor  # [C, 4] the box decoded for l_b, clipped to the image
    gt: Instances  # the image's full ground truth
    # [C] b's test-time score, on the scale of D's scores; None: p_b is that score
    cand_rank_scores: Optional[torch.Tensor] = None
    # [|D|, 4] and [C, 4] the boxes as NMS compared them; None: pred_boxes and cand_boxes
    base_nms_boxes: Optional[torch.Tensor] = None
    cand_nms_boxes: Optional[torch.Tensor] = None

    def rank_scores(self) -> torch.Tensor:
        return self.cand_scores if self.cand_rank_scores is None else self.cand_rank_scores

    def nms_boxes(self):
        """([|D|, 4], [C, 4]) the boxes NMS compared (suppression and the actions' NMS)."""
        base = self.base.pred_boxes.tensor if self.base_nms_boxes is None else self.base_nms_boxes
        cand = self.cand_boxes if self.cand_nms_boxes is None else self.cand_nms_boxes
        return base, cand


class _ImageSets(NamedTuple):
    """The S detection sets of one image with ground truth over a pool of P = |D| + C (+ 2X)
    boxes: D, then E estimator sets (k actions, or one swapped set per candidate with ``swap``),
    then |D| leave-one-out sets with ``kept_box_credit``, then X sets of D with two scores
    exchanged with ``update`` pairwise, then Q sets of D with one box moved past a memory
    opponent (the pool's last 2X + Q boxes are their copies)."""

    image: int  # index of the image in the batch
    inputs: PGImage
    cand_in_baseline: torch.Tensor  # [C] bool, candidate already selected by D (same slot, class)
    drawn: torch.Tensor  # [k, C] bool, raw Bernoulli draws ([0, C] with swap)
    suppressor: torch.Tensor  # [C] index into D of b's NMS suppressor, -1 if none or not swap
    pool_boxes: torch.Tensor  # [P, 4] D's boxes, then the candidates'
    pool_scores: torch.Tensor  # [P]
    pool_classes: torch.Tensor  # [P]
    membership: torch.Tensor  # [S, P] bool
    exchanges: torch.Tensor  # [X, 2] indices into D of each exchanged pair (u above v)
    memory_pairs: MemoryPairs  # the Q pairs (iii) of D's boxes with memory opponents


def _pad_stack(tensors: List[torch.Tensor], length: int, fill, dim: int = 0) -> torch.Tensor:
    """Stack tensors padded with `fill` to `length` along `dim` (their only differing dim)."""
    shape = list(tensors[0].shape)
    shape[dim] = length
    out = tensors[0].new_full([len(tensors)] + shape, fill)
    for i, t in enumerate(tensors):
        out[i].narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


def _cap_and_nms(selected, scores, boxes, classes, settings: PGSettings, nms_thresh: float):
    """Turn k Bernoulli draws into k detection sets (SPEC §1 step 4).

    selected [k, C] bool, scores [C], boxes [C, 4], classes [C] -> [k, C] bool: each action's
    selection after optional class-wise NMS and the cap to the `max_detections` best scores.
    """
    k, num_cand = selected.shape
    if settings.sample_nms and num_cand > 0:
        action_idx, cand_idx = selected.nonzero(as_tuple=True)
        # one batched NMS over all actions: groups are (action, class) pairs
        groups = action_idx * (int(classes.max()) + 1) + classes[cand_idx]
        keep = batched_nms(boxes[cand_idx], scores[cand_idx], groups, nms_thresh)
        selected = torch.zeros_like(selected)
        selected[action_idx[keep], cand_idx[keep]] = True
    if num_cand > settings.max_detections:
        order = torch.argsort(scores, descending=True, stable=True)
        rank_in_action = torch.cumsum(selected[:, order].int(), dim=1)
        capped = selected[:, order] & (rank_in_action <= settings.max_detections)
        selected = torch.zeros_like(selected)
        selected[:, order] = capped
    return selected


def _suppressors(image: PGImage, nms_thresh: float):
    """[C] index into D of the box that wins over each candidate in greedy class-wise NMS, -1
    where none does.

    That box is the highest-scoring box of D of b's class, scoring at least b's test-time score,
    that overlaps b by more than `nms_thresh` on the boxes NMS compared (greedy NMS visits kept
    boxes by descending score, so that is the one that removes b). The same holds for a b under
    the score threshold: it would be removed by that box if it took part. An empty D
    suppresses nothing.
    """
    base = image.base
    base_boxes, cand_boxes = image.nms_boxes()
    if len(base) == 0:
        return torch.full((len(cand_boxes),), -1, dtype=torch.long, device=cand_boxes.device)
    suppresses = (
        (base.pred_classes[None, :] == image.cand_classes[:, None])
        & (pairwise_iou(Boxes(cand_boxes), Boxes(base_boxes)) > nms_thresh)
        & (base.scores[None, :] >= image.rank_scores()[:, None])
    )  # [C, |D|]
    first = torch.where(suppresses, base.scores[None, :], float("-inf")).argmax(dim=1)
    return torch.where(suppresses.any(dim=1), first, torch.full_like(first, -1))


def _swap_sets(base_scores: torch.Tensor, suppressor: torch.Tensor,
               detection_cap: int) -> torch.Tensor:
    """The ``swap`` estimator's sets: [C, |D| + C] bool over the pool [D; candidates].

    Row b is D with candidate b in place of its suppressor. Where no box of D suppresses b, b is
    missing from D by the score threshold or by the detector's per-image cap: the row is
    D ∪ {b} while D holds fewer than `detection_cap` boxes, and otherwise D without its
    lowest-scored box, plus b — what inference outputs once b scores high enough to be kept,
    never a set of cap + 1 boxes that it could not output (the reward's own cap is per class,
    so it would count b). base_scores: [|D|] D's scores.
    """
    num_base, num_cand = len(base_scores), len(suppressor)
    rows = torch.arange(num_cand, device=suppressor.device)
    sets = torch.zeros((num_cand, num_base + num_cand), dtype=torch.bool,
                       device=suppressor.device)
    sets[:, :num_base] = True
    swapped = suppressor >= 0
    sets[rows[swapped], suppressor[swapped]] = False
    if num_base >= detection_cap:
        sets[rows[~swapped], base_scores.argmin()] = False
    sets[rows, num_base + rows] = True
    return sets


def _leave_one_out_sets(num_base: int, num_cand: int, device) -> torch.Tensor:
    """[|D|, |D| + C] bool: row d is D without its box d (``kept_box_credit``)."""
    sets = torch.zeros((num_base, num_base + num_cand), dtype=torch.bool, device=device)
    sets[:, :num_base] = ~torch.eye(num_base, dtype=torch.bool, device=device)
    return sets


def _widen(sets: torch.Tensor, pool: int) -> torch.Tensor:
    """[S, pool] bool: `sets` [S, P <= pool] with the pool's later boxes in no set."""
    wide = sets.new_zeros((sets.shape[0], pool))
    wide[:, :sets.shape[1]] = sets
    return wide


def _image_sets(i: int, image: PGImage, settings: PGSettings, nms_thresh: float,
                detection_cap: int, generator, exchanges: torch.Tensor,
                opponents: MemoryPairs) -> _ImageSets:
    """Pool and membership of the sets of one image with ground truth (steps 3-4); `nms_thresh`
    and `detection_cap` are the detector's test-time NMS threshold and per-image cap (the
    actions' NMS, the swap suppressors and sets); `exchanges` [X, 2] the pairs of D whose
    scores ``update`` pairwise exchanges and `opponents` its pairs with memory opponents (none
    otherwise).

    b is drawn with its policy probability p_b, and ranked (actions' NMS and cap, order inside
    every set) by its test-time score, the scale of D's scores.
    """
    base = image.base
    device = image.cand_scores.device
    cand_scores, cand_boxes, cand_classes = image.cand_scores, image.cand_boxes, image.cand_classes
    rank_scores = image.rank_scores()
    in_baseline = ((image.cand_slot[:, None] == image.base_slot[None, :])
                   & (cand_classes[:, None] == base.pred_classes[None, :])).any(dim=1)
    num_base, num_cand = len(base), len(cand_scores)
    first_exchange_copy = num_base + num_cand
    first_memory_copy = first_exchange_copy + 2 * len(exchanges)
    pool = first_memory_copy + len(opponents.box)
    suppressor = torch.full((num_cand,), -1, dtype=torch.long, device=device)
    if settings.reward_estimator == "swap":
        drawn = torch.zeros((0, num_cand), dtype=torch.bool, device=device)
        suppressor = _suppressors(image, nms_thresh)
        estimator_sets = _widen(_swap_sets(base.scores, suppressor, detection_cap), pool)
    else:
        draws = torch.rand((settings.num_samples, num_cand), generator=generator, device=device)
        drawn = draws < cand_scores
        estimator_sets = torch.zeros((settings.num_samples, pool), dtype=torch.bool,
                                     device=device)
        estimator_sets[:, num_base:num_base + num_cand] = _cap_and_nms(
            drawn, rank_scores, image.nms_boxes()[1], cand_classes, settings, nms_thresh)
    baseline_set = torch.zeros((1, pool), dtype=torch.bool, device=device)
    baseline_set[0, :num_base] = True
    sets = [baseline_set, estimator_sets]
    if settings.kept_box_credit:
        sets.append(_widen(_leave_one_out_sets(num_base, num_cand, device), pool))
    moved = opponents.box[:, None]
    sets.append(rescored_sets(num_base, first_exchange_copy, pool, exchanges))
    sets.append(rescored_sets(num_base, first_memory_copy, pool, moved))
    copy_boxes, copy_scores, copy_classes = rescored_pool(
        base, torch.cat([exchanges.flatten(), moved.flatten()]),
        torch.cat([exchanged_scores(base, exchanges).flatten(),
                   opponents.moved_score.to(base.scores)]))
    return _ImageSets(
        i, image, in_baseline, drawn, suppressor,
        torch.cat([base.pred_boxes.tensor, cand_boxes, copy_boxes]),
        torch.cat([base.scores, rank_scores, copy_scores]),
        torch.cat([base.pred_classes, cand_classes, copy_classes]),
        torch.cat(sets),
        exchanges,
        opponents,
    )


def _roi_images(probs, boxes, proposals, targets, settings: PGSettings,
                inference: InferenceThresholds) -> List[PGImage]:
    """The inputs of a two-stage detector's images: slots are the sampled RoIs, candidates the
    foreground RoIs with the box decoded for their label, D detectron2's inference.

    probs [R_i, K+1]; boxes [R_i, K*4] or [R_i, 4] (see :func:`compute_advantages`).
    """
    baseline, baseline_rois = _baseline_detections(probs, boxes, proposals, settings, inference)
    images = []
    for prob, box, prop, tgt, base, base_rois in zip(probs, boxes, proposals, targets, baseline,
                                                     baseline_rois):
        gt_classes = prop.gt_classes
        fg = (gt_classes >= 0) & (gt_classes < prob.shape[1] - 1) & _test_time_rois(prop, settings)
        cand_idx = torch.nonzero(fg, as_tuple=True)[0]
        cand_classes = gt_classes[cand_idx]
        if box.shape[1] == 4:
            cand_boxes = box[cand_idx]
        else:
            cand_boxes = box.view(len(prop), -1, 4)[cand_idx, cand_classes]
        cand_boxes = Boxes(cand_boxes.clone())
        cand_boxes.clip(prop.image_size)
        # the RoI's cross-entropy pushes towards its label: it raises D's box only if that is
        # the box's class
        sign = torch.where(gt_classes[base_rois] == base.pred_classes, 1.0, -1.0).to(prob.dtype)
        images.append(PGImage(len(prop), base, base_rois, sign, cand_idx, cand_classes,
                              prob[cand_idx, cand_classes], cand_boxes.tensor, tgt))
    return images


def _test_time_rois(prop: Instances, settings: PGSettings) -> torch.Tensor:
    """[R_i] bool: the RoIs that the reward may use, i.e. all but the appended ground-truth RoIs
    (unless ``include_gt_proposals``)."""
    if prop.has(FROM_GT_FIELD) and not settings.include_gt_proposals:
        return ~prop.get(FROM_GT_FIELD)
    return torch.ones(len(prop), dtype=torch.bool, device=prop.gt_classes.device)


def _baseline_detections(probs, boxes, proposals, settings: PGSettings,
                         inference: InferenceThresholds):
    """D of every image: detectron2's test-time inference over the RoIs that exist at test time
    (appended ground-truth RoIs left out unless ``include_gt_proposals``).

    Returns per image D (Instances) and [|D|] the RoI index of each of its boxes.
    """
    kept_rois = [torch.nonzero(_test_time_rois(p, settings), as_tuple=True)[0] for p in proposals]
    baseline, baseline_rois = fast_rcnn_inference(
        [b[idx] for b, idx in zip(boxes, kept_rois)],
        [p[idx] for p, idx in zip(probs, kept_rois)],
        [p.image_size for p in proposals], inference.score_thresh, inference.nms_thresh,
        inference.topk_per_image,
    )
    return baseline, [idx[rois] for idx, rois in zip(kept_rois, baseline_rois)]


def _candidate_advantages(sets: _ImageSets, estimator_rewards, baseline_reward, settings):
    """[C] A_b of one image's candidates and [C] bool whether the estimator has one (step 5).

    estimator_rewards [E]: the rewards of the image's k actions or C swapped sets.
    """
    if settings.reward_estimator == "swap":
        return estimator_rewards - baseline_reward, ~sets.cand_in_baseline
    k = settings.num_samples
    drawn = sets.drawn.to(estimator_rewards.dtype)  # [k, C]
    times = drawn.sum(dim=0)
    reward_with = estimator_rewards @ drawn  # [C]: Σ_j r(a_j) [b ∈ a_j]
    if settings.reward_estimator == "reinforce":
        reward_without = estimator_rewards.sum() - reward_with
        delta = reward_with / times.clamp(min=1) - reward_without / (k - times).clamp(min=1)
        return sets.inputs.cand_scores * delta, (times > 0) & (times < k)
    if settings.reward_estimator == "joint":
        return reward_with / k - baseline_reward, ~sets.cand_in_baseline
    return reward_with / times.clamp(min=1) - baseline_reward, ~sets.cand_in_baseline & (times > 0)


@torch.no_grad()
def compute_advantages(
    probs: List[torch.Tensor],
    boxes: List[torch.Tensor],
    proposals: List[Instances],
    targets: List[Instances],
    settings: PGSettings,
    generator: torch.Generator,
    inference: InferenceThresholds = InferenceThresholds(),
    reward_memory: Optional[RewardMemory] = None,
) -> PGAdvantages:
    """Advantages ``A_b`` for every sampled RoI of a batch of a two-stage detector.

    Args:
        probs: per image [R_i, K+1] softmax probabilities (background last).
        boxes: per image [R_i, K*4] (or [R_i, 4] class-agnostic) decoded boxes, XYXY absolute.
        proposals: per image the sampled RoIs, with ``gt_classes`` [R_i] and ``image_size``, and
            optionally ``pg_from_gt`` [R_i] bool (appended ground-truth RoIs).
        targets: per image the full ground truth (``gt_boxes``, ``gt_classes``): the reward counts
            every ground-truth box, also those that no sampled RoI matched.
        settings: the PG hyper-parameters.
        generator: random stream for the Bernoulli actions, on the probabilities' device.
        inference: the test-time inference that makes D (the box predictor's thresholds).
        reward_memory: the recent images of ``reward_scope`` dataset (see advantages_of_images).
    """
    device = probs[0].device if probs else torch.device("cpu")
    return advantages_of_images(
        _roi_images(probs, boxes, proposals, targets, settings, inference), settings, generator,
        device, inference.nms_thresh, inference.topk_per_image, reward_memory)


@torch.no_grad()
def advantages_of_images(images: List[PGImage], settings: PGSettings,
                         generator: torch.Generator, device, nms_thresh: float,
                         detection_cap: int,
                         reward_memory: Optional[RewardMemory] = None) -> PGAdvantages:
    """Advantages over the slots of a batch, from each image's D and candidates (steps 3-9):
    the detector-agnostic part that every detector family calls.

    The result's ``advantages`` and ``candidate_mask`` are the images' slots concatenated
    ([Σ num_slots]); ``device`` is where they live when the batch is empty. ``nms_thresh`` and
    ``detection_cap`` are the detector's own test-time NMS threshold and per-image detection
    cap (those that made D), which the actions' NMS and the swap estimator's suppressors and
    sets use: the caller passes its attributes, so no copy of them lives in PGSettings.

    With ``reward_scope`` dataset every set is scored by the dataset AP over ``reward_memory``
    (the caller's, kept across iterations; None: a memory of this batch only) and the batch
    (:mod:`pgdet.modeling.pg.dataset_reward`), and then the memory takes the batch's D; images
    without GT are scored too, their detections being the dataset's false positives.
    """
    advantages = [torch.zeros(image.num_slots, device=device) for image in images]
    estimated = [torch.zeros(image.num_slots, dtype=torch.bool, device=device) for image in images]
    swap = settings.reward_estimator == "swap"
    num_sampled = 1 if swap else settings.num_samples

    absent = torch.cat([_absent_class_slots(image, device) for image in images])
    dataset_scope = settings.reward_scope == "dataset"
    pairwise = settings.update == "pairwise"
    exchanges, opponents = _pairs_to_score(images, settings, reward_memory, device)
    per_image = [  # only images with ground truth have an image AP
        _image_sets(i, image, settings, nms_thresh, detection_cap, generator, exchanges[i],
                    opponents[i])
        for i, image in enumerate(images) if len(image.gt) > 0 or dataset_scope
    ]
    if not per_image:
        empty = torch.zeros(0, device=device)
        return PGAdvantages(torch.cat(advantages), empty, empty.view(0, num_sampled),
                            torch.cat(estimated), absent,
                            OrderPairs.cat([], device) if pairwise else None)

    rewards = _score_sets(per_image, settings, reward_memory)  # [B', S]
    num_estimator_sets = [len(s.inputs.cand_slot) if swap else settings.num_samples
                          for s in per_image]
    if swap:
        sampled_reward = torch.stack([
            rewards[row, 1:1 + n].mean() for row, n in enumerate(num_estimator_sets)
        ]).unsqueeze(1)  # NaN where an image has no candidate, hence no swapped set
    else:
        sampled_reward = rewards[:, 1:1 + settings.num_samples]
    if settings.baseline == "nms":
        baseline_reward = rewards[:, 0]
    else:
        baseline_reward = sampled_reward.mean(dim=1)

    slot_offsets = [0]
    for image in images:
        slot_offsets.append(slot_offsets[-1] + image.num_slots)
    order_pairs = []
    for row, (sets, num_est) in enumerate(zip(per_image, num_estimator_sets)):
        adv, est = advantages[sets.image], estimated[sets.image]
        if pairwise:
            order_pairs.append(_order_pairs(sets, rewards[row], num_est, settings,
                                            slot_offsets[sets.image]))
        base_slot, base_sign = sets.inputs.base_slot, sets.inputs.base_sign
        cand_adv, valid = _candidate_advantages(
            sets, rewards[row, 1:1 + num_est], baseline_reward[row], settings)
        cand_adv = torch.where(valid, cand_adv, torch.zeros_like(cand_adv))
        adv[sets.inputs.cand_slot] = cand_adv
        est[sets.inputs.cand_slot] = valid
        if settings.suppressor_credit:
            moved = (sets.suppressor >= 0) & (cand_adv > 0)
            suppressor = sets.suppressor[moved]
            adv.index_add_(0, base_slot[suppressor], -cand_adv[moved] * base_sign[suppressor])
            est[base_slot[suppressor]] = True
        if settings.kept_box_credit:
            num_base = len(base_slot)
            leave_one_out = rewards[row, 1 + num_est:1 + num_est + num_base]
            adv.index_add_(0, base_slot, (rewards[row, 0] - leave_one_out) * base_sign)
            est[base_slot] = True
        if settings.advantage_norm == "image_max" and len(adv):
            adv /= adv.abs().max().clamp(min=torch.finfo(adv.dtype).tiny)
    return PGAdvantages(
        torch.cat(advantages), baseline_reward, sampled_reward, torch.cat(estimated), absent,
        OrderPairs.cat(order_pairs, device) if pairwise else None,
    )


def _pairs_to_score(images: List[PGImage], settings: PGSettings,
                    reward_memory: Optional[RewardMemory], device):
    """Per image, the pairs (ii) of D ([X, 2]) and the pairs (iii) with memory opponents
    (:class:`MemoryPairs`) whose exchanges ``update`` pairwise scores; none otherwise."""
    no_memory_pairs = [MemoryPairs.none(device)]
    if settings.update != "pairwise":
        return ([torch.zeros((0, 2), dtype=torch.long, device=device)] * len(images),
                no_memory_pairs * len(images))
    matching = base_matching([image.base for image in images], [image.gt for image in images],
                             settings.iou_thresholds, settings.max_detections)
    exchanges = misordered_pairs(matching, settings.pairwise_max_pairs)
    if (settings.reward_scope != "dataset" or not settings.pairwise_memory_opponents
            or reward_memory is None or not len(reward_memory)):
        return exchanges, no_memory_pairs * len(images)
    thresholds = settings.iou_thresholds
    nothing = torch.zeros(0, dtype=torch.long, device=device)
    held = reward_memory.detections(ScoredDetections(
        nothing, matching.scores.new_zeros(0),
        torch.zeros((0, len(thresholds)), dtype=torch.bool, device=device), nothing))
    lowest = min(range(len(thresholds)), key=lambda t: thresholds[t])
    return exchanges, memory_pairs(matching, held.classes, held.scores, held.tp[:, lowest],
                                   settings.pairwise_memory_opponents,
                                   settings.pairwise_max_pairs)


def _order_pairs(sets: _ImageSets, rewards: torch.Tensor, num_est: int, settings: PGSettings,
                 slot_offset: int) -> OrderPairs:
    """One image's pairs of ``update`` pairwise, slots offset to the batch's.

    rewards [S_max]: the image's set rewards (D first); the swap estimator's rows 1..C give the
    suppression pairs' ΔAP, the last X rows (after the leave-one-out sets) the exchanges'.
    """
    inputs, base = sets.inputs, sets.inputs.base
    suppressed = (sets.suppressor >= 0) & ~sets.cand_in_baseline
    cand = torch.nonzero(suppressed, as_tuple=True)[0]
    winner = sets.suppressor[cand]
    first_exchange = 1 + num_est + (len(base) if settings.kept_box_credit else 0)
    u, v = sets.exchanges[:, 0], sets.exchanges[:, 1]
    first_memory = first_exchange + len(u)
    opponents = sets.memory_pairs
    box, demoted = opponents.box, opponents.demoted
    box_slot = inputs.base_slot[box] + slot_offset
    fixed = torch.full_like(box_slot, -1)  # the memory side: no slot
    batch_pairs = len(cand) + len(u)
    return OrderPairs(
        torch.cat([inputs.base_slot[winner] + slot_offset, inputs.base_slot[u] + slot_offset,
                   torch.where(demoted, box_slot, fixed)]),
        torch.cat([base.pred_classes[winner], base.pred_classes[u], base.pred_classes[box]]),
        torch.cat([inputs.cand_slot[cand] + slot_offset, inputs.base_slot[v] + slot_offset,
                   torch.where(demoted, fixed, box_slot)]),
        torch.cat([inputs.cand_classes[cand], base.pred_classes[v], base.pred_classes[box]]),
        torch.cat([rewards[1 + cand], rewards[first_exchange:first_memory],
                   rewards[first_memory:first_memory + len(box)]]) - rewards[0],
        torch.cat([torch.ones_like(cand, dtype=torch.bool), torch.zeros_like(u, dtype=torch.bool),
                   torch.zeros_like(box, dtype=torch.bool)]),
        torch.cat([rewards.new_zeros(batch_pairs),
                   (_logit(opponents.opponent_score) - _logit(base.scores[box])).to(rewards)]),
        torch.cat([torch.zeros(batch_pairs, dtype=torch.bool, device=box.device),
                   ~torch.isin(base.pred_classes[box], inputs.gt.gt_classes.to(box.device))]),
    )


def _logit(scores: torch.Tensor) -> torch.Tensor:
    """log(s / (1 − s)) of scores in [0, 1], finite at 0 and 1 (clamped to float32's
    resolution there)."""
    eps = torch.finfo(torch.float32).eps
    s = scores.float().clamp(eps, 1 - eps)
    return torch.log(s) - torch.log1p(-s)


def _absent_class_slots(image: PGImage, device) -> torch.Tensor:
    """[num_slots] bool: the slots of D's boxes whose class has no GT in the image."""
    slots = torch.zeros(image.num_slots, dtype=torch.bool, device=device)
    classes = image.base.pred_classes
    slots[image.base_slot[~torch.isin(classes, image.gt.gt_classes.to(classes.device))]] = True
    return slots


def _score_sets(per_image: List[_ImageSets], settings: PGSettings,
                reward_memory: Optional[RewardMemory]) -> torch.Tensor:
    """[B', S_max] float32 reward of every set of every image, in one :func:`image_ap` call
    (padded sets are empty and padded pool entries belong to no set), or with ``reward_scope``
    dataset one :func:`dataset_ap` call on the same sets' matching (set 0 is each image's D)."""
    device = per_image[0].pool_scores.device
    p_max = max(len(s.pool_boxes) for s in per_image)
    g_max = max(len(s.inputs.gt) for s in per_image)
    s_max = max(len(s.membership) for s in per_image)
    membership = torch.zeros((len(per_image), s_max, p_max), dtype=torch.bool, device=device)
    for row, sets in enumerate(per_image):
        membership[row, : sets.membership.shape[0], : sets.membership.shape[1]] = sets.membership
    gt_classes = _pad_stack([s.inputs.gt.gt_classes for s in per_image], g_max, -1)
    gt_valid = _pad_stack([torch.ones(len(s.inputs.gt), dtype=torch.bool, device=device)
                           for s in per_image], g_max, False)
    inputs = (
        _pad_stack([s.pool_boxes for s in per_image], p_max, 0.0),
        _pad_stack([s.pool_scores for s in per_image], p_max, 0.0),
        _pad_stack([s.pool_classes for s in per_image], p_max, -1),
        membership,
        _pad_stack([s.inputs.gt.gt_boxes.tensor for s in per_image], g_max, 0.0),
        gt_classes, gt_valid, settings.iou_thresholds, settings.max_detections,
    )
    if settings.reward_scope == "dataset":
        memory = RewardMemory(0) if reward_memory is None else reward_memory
        # float32 as image_ap's: rewards near 0.5 resolve AP changes down to about 6e-8
        return dataset_ap(match_sets(*inputs), gt_classes, gt_valid, memory).float()
    return image_ap(*inputs)
