"""Soft-NMS at test time (Bodla et al. 2017, "Improving Object Detection With One Line of Code").

The paper's Table 1 compares the policy-gradient detector with "standard + soft-NMS". Greedy NMS
deletes every box overlapping a higher-scored one by more than a threshold; soft-NMS instead
decays its score by a function of the overlap, so a true neighbouring object keeps a (lower)
score instead of being lost. :func:`fast_rcnn_inference_soft_nms` has the contract of detectron2's
``fast_rcnn_inference`` so the box predictor can call it in place of greedy NMS.
"""
import math
from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances
from detectron2.structures.boxes import matched_pairwise_iou

from ...config_error import raise_if_invalid

SOFT_NMS_METHODS = ("linear", "gaussian")


def check_soft_nms_config(cfg):
    """Fail at build time, naming the key and its allowed range, on an unusable MODEL.SOFT_NMS."""
    soft = cfg.MODEL.SOFT_NMS
    problems = []
    if soft.METHOD not in SOFT_NMS_METHODS:
        problems.append(
            f"MODEL.SOFT_NMS.METHOD must be one of {SOFT_NMS_METHODS}, got {soft.METHOD!r}"
        )
    if not 0 < soft.IOU_THRESH < 1:
        problems.append(f"MODEL.SOFT_NMS.IOU_THRESH must be in (0, 1), got {soft.IOU_THRESH}")
    if not soft.SIGMA > 0:
        problems.append(f"MODEL.SOFT_NMS.SIGMA must be > 0, got {soft.SIGMA}")
    if not 0 <= soft.SCORE_THRESH < 1:
        problems.append(f"MODEL.SOFT_NMS.SCORE_THRESH must be in [0, 1), got {soft.SCORE_THRESH}")
    raise_if_invalid("soft-NMS", problems)


def fast_rcnn_inference_soft_nms(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    topk_per_image: int,
    *,
    method: str,
    iou_thresh: float,
    sigma: float,
    prune_thresh: float,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """detectron2's ``fast_rcnn_inference`` with class-wise soft-NMS instead of greedy NMS.

    Args:
        boxes: per image, [Ri, K*4] class-specific or [Ri, 4] class-agnostic decoded boxes.
        scores: per image, [Ri, K+1] class probabilities, background last.
        image_shapes: per image, (height, width) to clip the boxes to.
        score_thresh: only (RoI, class) pairs scoring above this enter soft-NMS.
        topk_per_image: keep this many highest decayed scores over all classes (< 0: all).
        method: "linear" (s *= 1 - IoU when IoU > iou_thresh) or "gaussian"
            (s *= exp(-IoU² / sigma)).
        iou_thresh, sigma: parameters of the two decay functions.
        prune_thresh: detections whose decayed score falls below this are dropped.

    Returns:
        As ``fast_rcnn_inference``: per image an Instances with ``pred_boxes``, ``scores`` (the
        decayed scores, in decreasing order) and ``pred_classes``; and per image the [D] indices
        in [0, Ri) of the RoIs the detections come from.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"soft-NMS method must be one of {SOFT_NMS_METHODS}, got {method!r}")
    results = [
        _soft_nms_single_image(
            b, s, shape, score_thresh, topk_per_image, method, iou_thresh, sigma, prune_thresh
        )
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def _soft_nms_single_image(
    boxes, scores, image_shape, score_thresh, topk_per_image, method, iou_thresh, sigma,
    prune_thresh,
):
    """One image of :func:`fast_rcnn_inference_soft_nms`; input handling as detectron2's
    ``fast_rcnn_inference_single_image``, except that the returned RoI indices refer to the
    input rows even when non-finite rows were filtered out."""
    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    roi_index = valid_mask.nonzero()[:, 0]  # [R'] input row of each valid row
    boxes, scores = boxes[valid_mask], scores[valid_mask][:, :-1]
    num_bbox_reg_classes = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, num_bbox_reg_classes, 4)  # [R', C, 4]

    filter_mask = scores > score_thresh  # [R', K]
    filter_inds = filter_mask.nonzero()  # [N, 2]: (valid row, class) of each candidate
    if num_bbox_reg_classes == 1:
        boxes = boxes[filter_inds[:, 0], 0]
    else:
        boxes = boxes[filter_mask]
    scores = scores[filter_mask]

    keep, decayed = _batched_soft_nms(
        boxes, scores, filter_inds[:, 1], method, iou_thresh, sigma, prune_thresh
    )
    if topk_per_image >= 0:
        keep, decayed = keep[:topk_per_image], decayed[:topk_per_image]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = decayed
    result.pred_classes = filter_inds[keep, 1]
    return result, roi_index[filter_inds[keep, 0]]


def _batched_soft_nms(boxes, scores, classes, method, iou_thresh, sigma, prune_thresh):
    """Soft-NMS of every class at once (Bodla et al. Algorithm 1, run per class).

    The candidates are laid out as a [C, M] grid, one row per class present, M = the largest
    class's count. Each step picks every row's highest remaining score, removes it, and decays
    the rest of its row by the overlap with it; a candidate is dropped once its score falls
    below ``prune_thresh`` (scores only decrease, so it could never be kept again). The loop is
    the algorithm's sequential selection; each step is vectorised over classes and candidates.

    Args:
        boxes: [N, 4]; scores: [N]; classes: [N] long.
    Returns:
        keep: [D] indices into the N candidates, by decreasing decayed score.
        decayed: [D] their scores at the time they were selected.
    """
    num = scores.numel()
    if num == 0:
        return classes.new_zeros(0), scores.new_zeros(0)
    class_ids, row, count = torch.unique(classes, return_inverse=True, return_counts=True)
    order = torch.argsort(row, stable=True)  # candidates grouped by class
    first_of_row = torch.cumsum(count, 0) - count
    col = torch.empty_like(row)
    col[order] = torch.arange(num, device=row.device) - first_of_row[row[order]]
    shape = (len(class_ids), int(count.max()))

    grid_index = row.new_zeros(shape)  # candidate index of each grid cell
    grid_index[row, col] = torch.arange(num, device=row.device)
    grid_boxes = boxes.new_zeros(shape + (4,))
    grid_boxes[row, col] = boxes
    grid_scores = scores.new_zeros(shape)
    grid_scores[row, col] = scores
    active = torch.zeros(shape, dtype=torch.bool, device=scores.device)
    active[row, col] = scores >= prune_thresh
    selected = torch.zeros_like(active)

    rows = torch.arange(shape[0], device=row.device)
    while bool(active.any()):
        has_active = active.any(dim=1)  # [C]
        best = grid_scores.masked_fill(~active, -math.inf).argmax(dim=1)  # [C]
        pick_rows = rows[has_active]
        pick_cols = best[has_active]
        selected[pick_rows, pick_cols] = True
        active[pick_rows, pick_cols] = False
        picked_boxes = grid_boxes[pick_rows, pick_cols]  # [C', 4]
        iou = matched_pairwise_iou(
            Boxes(picked_boxes[:, None].expand(-1, shape[1], -1).reshape(-1, 4)),
            Boxes(grid_boxes[pick_rows].reshape(-1, 4)),
        ).view(-1, shape[1])  # [C', M]
        iou = torch.nan_to_num(iou, nan=0.0)  # two empty (clipped-away) boxes do not overlap
        if method == "linear":
            decay = torch.where(iou > iou_thresh, 1 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou**2) / sigma)
        row_active = active[pick_rows]
        grid_scores[pick_rows] = torch.where(
            row_active, grid_scores[pick_rows] * decay, grid_scores[pick_rows]
        )
        active[pick_rows] = row_active & (grid_scores[pick_rows] >= prune_thresh)

    decayed = grid_scores[selected]
    keep = grid_index[selected]
    order = torch.argsort(decayed, descending=True, stable=True)
    return keep[order], decayed[order]
