"""Per-box advantages of the policy-gradient classification loss (paper §3.3, SPEC §1 steps 1-9).

For each image of a training batch this module turns the box predictor's outputs on the sampled
RoIs into one advantage per RoI, ``A_b = r(b) - r'``:

1. the *baseline* detections D: detectron2's test-time inference (score threshold, class-wise
   NMS, top-N) on the same RoIs, scored with the per-image COCO AP -> ``r'`` (eq. 9);
2. the *candidates*: foreground RoIs, each with its ground-truth class ``l_b`` (eq. 7), the box
   decoded for that class, and its probability ``p_b``;
3. k *actions*: each candidate kept independently with probability ``p_b`` (Bernoulli), capped
   to the N_bb highest scores (eq. 3), optionally class-wise NMS'd; each scored -> ``r(a_j)``;
4. ``r(b)`` from the k rewards (``joint``: the paper's Monte-Carlo estimate of
   Σ_a p(a) r(a) δ(a,b); ``conditional``: mean reward of the actions containing b); or, with
   ``swap``, no sampling: r(b) = AP of D with b in place of the box that suppressed it in NMS
   (D ∪ {b} if none did), the counterfactual behind the paper's "boxes that have higher IoU
   with ground truth boxes than selected ones will get positive rewards" (§3.3);
5. ``A_b = r(b) - r'``, zero for RoIs that D already selected (same RoI and class), for
   background RoIs, and for images without ground truth.

All k + 1 detection sets of all images are scored by one call of
:func:`pgdet.modeling.reward.image_ap`, over a per-image *pool* (D's boxes followed by the
candidates' boxes) with a membership mask, so IoUs with the ground truth are computed once per
image and the sequential part of COCO matching runs once for the whole batch.

Everything here runs without gradient, on the logits' device. Host synchronisations per batch
are a fixed number (the sizes used for padding, the NMS of detectron2's inference), independent
of the number of boxes.
"""
from dataclasses import dataclass
from typing import List, NamedTuple, Sequence

import torch
from detectron2.layers import batched_nms
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou

from .reward import COCO_IOU_THRESHOLDS, image_ap

REWARD_ESTIMATORS = ("joint", "conditional", "swap")
BASELINES = ("nms", "sampled_mean")


@dataclass
class PGSettings:
    """The PG hyper-parameters (MODEL.PG.* and the test-time inference used for the baseline)."""

    num_samples: int = 10
    reward_estimator: str = "joint"
    sample_nms: bool = False
    baseline: str = "nms"
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS
    max_detections: int = 100
    test_score_thresh: float = 0.05
    test_nms_thresh: float = 0.5


@dataclass
class PGAdvantages:
    """Outputs of :func:`compute_advantages` for a batch of R RoIs over B images.

    advantages:      [R] float, ``A_b`` per sampled RoI (0 for background / NMS-selected / no GT).
    baseline_reward: [B'] float, ``r'`` of each image with ground truth (B' <= B).
    sampled_reward:  [B', k] float, ``r(a_j)`` of each action of those images; with ``swap``
                     [B', 1], the mean reward of the image's swapped sets.
    candidate_mask:  [R] bool, foreground RoIs of images with ground truth not selected by D:
                     the RoIs whose advantage the method actually estimates.
    """

    advantages: torch.Tensor
    baseline_reward: torch.Tensor
    sampled_reward: torch.Tensor
    candidate_mask: torch.Tensor


class _ImageSets(NamedTuple):
    """The S detection sets of one image with ground truth (D, then k actions or, with ``swap``,
    one set per candidate), over a pool of P = |D| + C boxes."""

    image: int  # index of the image in the batch
    cand_idx: torch.Tensor  # [C] RoI index of each candidate (foreground RoI)
    not_in_baseline: torch.Tensor  # [C] bool, candidate not already selected by D
    selected: torch.Tensor  # [k, C] bool, candidate b is in action j ([0, C] with swap)
    pool_boxes: torch.Tensor  # [P, 4] D's boxes, then the candidates'
    pool_scores: torch.Tensor  # [P]
    pool_classes: torch.Tensor  # [P]
    membership: torch.Tensor  # [S, P] bool, set 0 = D, then the actions or swapped sets
    gt: Instances  # the image's full ground truth


def _pad_stack(tensors: List[torch.Tensor], length: int, fill, dim: int = 0) -> torch.Tensor:
    """Stack tensors padded with `fill` to `length` along `dim` (their only differing dim)."""
    shape = list(tensors[0].shape)
    shape[dim] = length
    out = tensors[0].new_full([len(tensors)] + shape, fill)
    for i, t in enumerate(tensors):
        out[i].narrow(dim, 0, t.shape[dim]).copy_(t)
    return out


def _cap_and_nms(selected, scores, boxes, classes, settings: PGSettings):
    """Turn k Bernoulli draws into k detection sets (SPEC §1 step 4).

    selected [k, C] bool, scores [C], boxes [C, 4], classes [C] -> [k, C] bool: each action's
    selection after optional class-wise NMS and the cap to the `max_detections` best scores.
    """
    k, num_cand = selected.shape
    if settings.sample_nms and num_cand > 0:
        action_idx, cand_idx = selected.nonzero(as_tuple=True)
        # one batched NMS over all actions: groups are (action, class) pairs
        groups = action_idx * (int(classes.max()) + 1) + classes[cand_idx]
        keep = batched_nms(boxes[cand_idx], scores[cand_idx], groups, settings.test_nms_thresh)
        selected = torch.zeros_like(selected)
        selected[action_idx[keep], cand_idx[keep]] = True
    if num_cand > settings.max_detections:
        order = torch.argsort(scores, descending=True, stable=True)
        rank_in_action = torch.cumsum(selected[:, order].int(), dim=1)
        capped = selected[:, order] & (rank_in_action <= settings.max_detections)
        selected = torch.zeros_like(selected)
        selected[:, order] = capped
    return selected


def _swap_sets(base: Instances, cand_boxes, cand_scores, cand_classes, nms_thresh: float):
    """The ``swap`` estimator's sets: [1 + C, |D| + C] bool over the pool [D; candidates].

    Row 0 is D. Row 1 + b is D with candidate b in place of its *suppressor*, the box of D that
    wins over b in greedy class-wise NMS: the highest-scoring box of D of b's class, scoring at
    least b's score, that overlaps b by more than `nms_thresh` (greedy NMS visits kept boxes by
    descending score, so that is the one that removes b). The same holds for a b under the score
    threshold: it would be removed by that box if it took part. A candidate that no box of D
    overlaps that much (missing from D only by the score threshold or the detection cap) is added
    to D instead.
    """
    num_base, num_cand = len(base), len(cand_boxes)
    suppresses = (
        (base.pred_classes[None, :] == cand_classes[:, None])
        & (pairwise_iou(Boxes(cand_boxes), base.pred_boxes) > nms_thresh)
        & (base.scores[None, :] >= cand_scores[:, None])
    )  # [C, |D|]
    first = torch.where(suppresses, base.scores[None, :], float("-inf")).argmax(dim=1)  # [C]
    rows = torch.arange(num_cand, device=cand_boxes.device)
    sets = torch.zeros((1 + num_cand, num_base + num_cand), dtype=torch.bool,
                       device=cand_boxes.device)
    sets[:, :num_base] = True
    suppressed = suppresses.any(dim=1)
    sets[1 + rows[suppressed], first[suppressed]] = False
    sets[1 + rows, num_base + rows] = True
    return sets


@torch.no_grad()
def compute_advantages(
    probs: List[torch.Tensor],
    boxes: List[torch.Tensor],
    proposals: List[Instances],
    targets: List[Instances],
    settings: PGSettings,
    generator: torch.Generator,
) -> PGAdvantages:
    """Advantages ``A_b`` for every sampled RoI of a batch.

    Args:
        probs: per image [R_i, K+1] softmax probabilities (background last).
        boxes: per image [R_i, K*4] (or [R_i, 4] class-agnostic) decoded boxes, XYXY absolute.
        proposals: per image the sampled RoIs, with ``gt_classes`` [R_i] and ``image_size``.
        targets: per image the full ground truth (``gt_boxes``, ``gt_classes``): the reward counts
            every ground-truth box, also those that no sampled RoI matched.
        settings: the PG hyper-parameters.
        generator: random stream for the Bernoulli actions, on the probabilities' device.
    """
    device = probs[0].device if probs else torch.device("cpu")
    num_rois = [len(p) for p in proposals]
    advantages = [torch.zeros(n, device=device) for n in num_rois]
    candidate_masks = [torch.zeros(n, dtype=torch.bool, device=device) for n in num_rois]
    k = settings.num_samples

    image_shapes = [p.image_size for p in proposals]
    baseline, baseline_rois = fast_rcnn_inference(
        boxes, probs, image_shapes, settings.test_score_thresh, settings.test_nms_thresh,
        settings.max_detections,
    )

    per_image: List[_ImageSets] = []  # only images with ground truth have a reward
    for i, (prob, box, prop, tgt) in enumerate(zip(probs, boxes, proposals, targets)):
        if len(tgt) == 0:
            continue
        num_classes = prob.shape[1] - 1
        gt_classes = prop.gt_classes
        fg = (gt_classes >= 0) & (gt_classes < num_classes)
        # a foreground RoI that D already holds with its ground-truth class has reward 0
        in_baseline = torch.zeros((len(prop), num_classes), dtype=torch.bool, device=device)
        in_baseline[baseline_rois[i], baseline[i].pred_classes] = True
        cand_idx = torch.nonzero(fg, as_tuple=True)[0]
        cand_classes = gt_classes[cand_idx]
        cand_scores = prob[cand_idx, cand_classes]
        if box.shape[1] == 4:
            cand_boxes = box[cand_idx]
        else:
            cand_boxes = box.view(len(prop), -1, 4)[cand_idx, cand_classes]
        cand_boxes = Boxes(cand_boxes.clone())
        cand_boxes.clip(prop.image_size)
        cand_boxes = cand_boxes.tensor

        num_base = len(baseline[i])
        pool_boxes = torch.cat([baseline[i].pred_boxes.tensor, cand_boxes])
        pool_scores = torch.cat([baseline[i].scores, cand_scores])
        pool_classes = torch.cat([baseline[i].pred_classes, cand_classes])
        if settings.reward_estimator == "swap":
            selected = torch.zeros((0, len(cand_idx)), dtype=torch.bool, device=device)
            membership = _swap_sets(baseline[i], cand_boxes, cand_scores, cand_classes,
                                    settings.test_nms_thresh)
        else:
            draws = torch.rand((k, len(cand_idx)), generator=generator, device=device)
            selected = _cap_and_nms(draws < cand_scores, cand_scores, cand_boxes, cand_classes,
                                    settings)
            membership = torch.zeros((k + 1, len(pool_boxes)), dtype=torch.bool, device=device)
            membership[0, :num_base] = True
            membership[1:, num_base:] = selected
        per_image.append(
            _ImageSets(i, cand_idx, ~in_baseline[cand_idx, cand_classes], selected,
                       pool_boxes, pool_scores, pool_classes, membership, tgt)
        )

    swap = settings.reward_estimator == "swap"
    if not per_image:
        empty = torch.zeros(0, device=device)
        return PGAdvantages(
            torch.cat(advantages), empty, empty.view(0, 1 if swap else k),
            torch.cat(candidate_masks),
        )

    p_max = max(len(s.pool_boxes) for s in per_image)
    g_max = max(len(s.gt) for s in per_image)
    s_max = max(len(s.membership) for s in per_image)  # k + 1, or 1 + most candidates with swap
    # [B', S, P]: each image's sets and pool differ in size; padded sets are empty, AP ignored
    membership = torch.zeros((len(per_image), s_max, p_max), dtype=torch.bool, device=device)
    for row, sets in enumerate(per_image):
        membership[row, : sets.membership.shape[0], : sets.membership.shape[1]] = sets.membership
    rewards = image_ap(
        _pad_stack([s.pool_boxes for s in per_image], p_max, 0.0),
        _pad_stack([s.pool_scores for s in per_image], p_max, 0.0),
        _pad_stack([s.pool_classes for s in per_image], p_max, -1),
        membership,
        _pad_stack([s.gt.gt_boxes.tensor for s in per_image], g_max, 0.0),
        _pad_stack([s.gt.gt_classes for s in per_image], g_max, -1),
        _pad_stack([torch.ones(len(s.gt), dtype=torch.bool, device=device) for s in per_image],
                   g_max, False),
        settings.iou_thresholds,
        settings.max_detections,
    )  # [B', S]
    if swap:
        num_cand = torch.tensor([len(s.cand_idx) for s in per_image], device=device)
        sampled_reward = (rewards[:, 1:].sum(dim=1) / num_cand.clamp(min=1)).unsqueeze(1)
    else:
        sampled_reward = rewards[:, 1:]
    if settings.baseline == "nms":
        baseline_reward = rewards[:, 0]
    else:
        baseline_reward = sampled_reward.mean(dim=1)

    for row, sets in enumerate(per_image):
        sel = sets.selected.to(sampled_reward.dtype)  # [k, C]
        if swap:
            box_reward = rewards[row, 1:1 + len(sets.cand_idx)]
            has_estimate = torch.ones_like(sets.not_in_baseline)
        elif settings.reward_estimator == "joint":
            reward_sum = sampled_reward[row] @ sel  # [C]: Σ_j r(a_j) [b ∈ a_j]
            box_reward = reward_sum / k
            has_estimate = torch.ones_like(sets.not_in_baseline)
        else:
            times_selected = sel.sum(dim=0)
            box_reward = (sampled_reward[row] @ sel) / times_selected.clamp(min=1)
            has_estimate = times_selected > 0
        valid = sets.not_in_baseline & has_estimate
        advantages[sets.image][sets.cand_idx] = torch.where(
            valid, box_reward - baseline_reward[row], torch.zeros_like(box_reward)
        )
        candidate_masks[sets.image][sets.cand_idx] = sets.not_in_baseline
    return PGAdvantages(
        torch.cat(advantages), baseline_reward, sampled_reward, torch.cat(candidate_masks)
    )
