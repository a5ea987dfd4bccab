"""COCO box AP (AP@[.5:.95], all areas, 100 detections per image) of one model's detections on
many resamples of its test images at once: the test-set bootstrap of a method's AP.

A resample draws the test images with replacement, so an image can occur several times, which
pycocotools' COCOeval cannot express (image ids are unique). But COCOeval's per-image matching
(``evaluate()``: which detection matches which ground truth, at each IoU threshold) does not
depend on the other images, and its accumulation depends on a resample only through how many
times each image occurs. So the matching runs once per model, and a resample is a vector of image
multiplicities c (one row of `counts`), with:

- the detections of a category ordered by score exactly as COCOeval orders them (a stable sort of
  the images' detections in image-id order); an image drawn c times contributes each of its
  detections c times, at the same place in that order;
- the cumulative true-positive and detection counts at every true positive linear in c: a matrix
  product ``counts @ per-image cumulative counts`` gives them for every resample at once;
- only the last copy of a true positive can set COCOeval's interpolated precision (later copies
  have higher recall and precision than earlier ones, and a false positive has the recall of the
  true positive before it and a lower precision), so the 101-point precision is the largest
  precision among true positives whose recall reaches each recall threshold, or 0.

With every multiplicity 1 the recall and precision values are COCOeval's own, computed the same
way, so the identity resample gives bit for bit the AP that pycocotools (and detectron2's
COCOEvaluator without its C++ extension) reports. A resample gives the AP that COCOeval computes
on its images copied under new ids, except that detections of equal score in one image may be
ordered differently (COCOeval would put them copy after copy).
"""
import contextlib
import io
import json
from typing import List, NamedTuple, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAX_DETECTIONS = 100  # COCO's AP uses at most 100 detections per image
RESAMPLES_PER_CHUNK = 100  # bounds the [resamples, IoUs, recalls, categories] precision array


class PerImageEvaluation(NamedTuple):
    """One model's COCOeval matching, reduced to what AP on any resample needs.

    `true_positives[k][t]` and `detections[k][t]` are [images, P] arrays: for the P true positives
    of category k at IoU threshold t, in score order, how many true positives and how many
    non-ignored detections each image has at or above that one (cumulative counts).
    """

    image_ids: Tuple[int, ...]  # in COCOeval's order (sorted); columns of `counts`
    ground_truths: np.ndarray  # [categories, images] non-ignored ground-truth boxes
    true_positives: List[List[np.ndarray]]
    detections: List[List[np.ndarray]]
    recall_thresholds: np.ndarray  # COCOeval's 101 recall points


def _quiet(function, *args):
    """pycocotools prints progress for every call; the bootstrap makes many."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _load_detections(ground_truth: COCO, predictions_json: str) -> COCO:
    """The predictions as a COCO object; an empty file (a model without any detection, whose AP
    is 0) gives an empty one, since COCO.loadRes fails on an empty list."""
    with open(predictions_json) as f:
        predictions = json.load(f)
    if predictions:
        return _quiet(ground_truth.loadRes, predictions)
    empty = COCO()
    empty.dataset = {"images": ground_truth.dataset["images"], "annotations": [],
                     "categories": ground_truth.dataset["categories"]}
    _quiet(empty.createIndex)
    return empty


def per_image_evaluation(ground_truth_json: str, predictions_json: str) -> PerImageEvaluation:
    """Run COCOeval's per-image matching once (box IoU, area "all", 100 detections per image) on
    detectron2's COCO-format files: the dataset's ground truth and ``coco_instances_results.json``.
    """
    ground_truth = _quiet(COCO, ground_truth_json)
    coco_eval = COCOeval(ground_truth, _load_detections(ground_truth, predictions_json), "bbox")
    params = coco_eval.params
    params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]  # "all"
    params.maxDets = [MAX_DETECTIONS]
    _quiet(coco_eval.evaluate)
    num_images = len(params.imgIds)
    per_category = [coco_eval.evalImgs[k * num_images:(k + 1) * num_images]
                    for k in range(len(params.catIds))]
    ground_truths, true_positives, detections = [], [], []
    for evaluations in per_category:
        gt_count, tp_counts, det_counts = _category_counts(evaluations, len(params.iouThrs))
        ground_truths.append(gt_count)
        true_positives.append(tp_counts)
        detections.append(det_counts)
    return PerImageEvaluation(tuple(params.imgIds), np.array(ground_truths).reshape(-1, num_images),
                              true_positives, detections, params.recThrs)


def _category_counts(evaluations: Sequence, num_thresholds: int):
    """One category: non-ignored ground truths per image, and per IoU threshold the cumulative
    per-image counts at each true positive, in COCOeval's detection order."""
    num_images = len(evaluations)
    present = [(i, e) for i, e in enumerate(evaluations) if e is not None]
    gt_count = np.zeros(num_images)
    for i, e in present:
        gt_count[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
    if not present:
        return gt_count, [np.zeros((num_images, 0))] * num_thresholds, [
            np.zeros((num_images, 0))] * num_thresholds
    scores = np.concatenate([e["dtScores"][:MAX_DETECTIONS] for _, e in present])
    image = np.concatenate([np.full(len(e["dtScores"][:MAX_DETECTIONS]), i) for i, e in present])
    matched = np.concatenate([e["dtMatches"][:, :MAX_DETECTIONS] for _, e in present], axis=1)
    ignored = np.concatenate([e["dtIgnore"][:, :MAX_DETECTIONS] for _, e in present], axis=1)
    order = np.argsort(-scores, kind="mergesort")  # COCOeval's order, ties included
    image, matched, counted = image[order], matched[:, order] != 0, ignored[:, order] == 0
    tp_counts, det_counts = [], []
    for matched_t, counted_t in zip(matched, counted):
        true_positive = matched_t & counted_t
        columns = np.flatnonzero(true_positive)
        tp_counts.append(_cumulative_per_image(image, true_positive, num_images)[:, columns])
        det_counts.append(_cumulative_per_image(image, counted_t, num_images)[:, columns])
    return gt_count, tp_counts, det_counts


def _cumulative_per_image(image: np.ndarray, selected: np.ndarray, num_images: int):
    """[images, detections]: how many selected detections each image has up to each position
    of the score order (`image[j]` is the image of the j-th detection)."""
    one_hot = np.zeros((num_images, len(image)))
    one_hot[image, np.arange(len(image))] = selected
    return np.cumsum(one_hot, axis=1)


def resample_counts(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, images] multiplicities of `resamples` draws of `num_images` images with
    replacement, from numpy's generator seeded with `seed` (the same draws for every model)."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    flat = draws + num_images * np.arange(resamples)[:, None]
    return np.bincount(flat.ravel(), minlength=resamples * num_images).reshape(
        resamples, num_images).astype(float)


def resampled_ap(evaluation: PerImageEvaluation, counts: np.ndarray) -> np.ndarray:
    """COCO AP (fraction, not %) on each resample, a row of image multiplicities in `counts`
    ([resamples, images]); NaN for a resample without any ground truth."""
    starts = range(0, len(counts), RESAMPLES_PER_CHUNK)
    return np.concatenate([
        _resampled_ap_chunk(evaluation, counts[start:start + RESAMPLES_PER_CHUNK])
        for start in starts])


def _resampled_ap_chunk(evaluation: PerImageEvaluation, counts: np.ndarray) -> np.ndarray:
    """COCOeval's precision array [resamples, IoUs, recalls, categories] for these resamples,
    averaged over the categories with ground truth as summarize() does (same order of sums)."""
    shape = (len(counts), len(evaluation.true_positives[0]), len(evaluation.recall_thresholds),
             len(evaluation.ground_truths))
    precision = np.zeros(shape)
    ground_truths = counts @ evaluation.ground_truths.T  # [resamples, categories]
    for k, (tp_counts, det_counts) in enumerate(zip(evaluation.true_positives,
                                                    evaluation.detections)):
        for t, (tp, det) in enumerate(zip(tp_counts, det_counts)):
            precision[:, t, :, k] = _interpolated_precision(
                counts @ tp, counts @ det, ground_truths[:, k], evaluation.recall_thresholds)
    return _mean_over_present_categories(precision, ground_truths > 0)


def _interpolated_precision(true_positives, detections, ground_truths, recall_thresholds):
    """COCOeval's 101-point precision from the cumulative counts at each true positive
    ([resamples, P]): at each recall threshold, the largest precision reached at or beyond it."""
    recall = true_positives / np.where(ground_truths > 0, ground_truths, 1)[:, None]
    precision = true_positives / (detections + np.spacing(1))
    best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    best_after = np.concatenate([best_after, np.zeros((len(best_after), 1))], axis=1)
    # thresholds at or below each recall; their counts give, per threshold, the first true
    # positive whose recall reaches it (recall grows along a row)
    reached = np.searchsorted(recall_thresholds, recall, side="right")
    bins = len(recall_thresholds) + 1
    flat = reached + bins * np.arange(len(reached))[:, None]
    below = np.bincount(flat.ravel(), minlength=len(reached) * bins).reshape(-1, bins)
    first_reaching = np.cumsum(below, axis=1)[:, :-1]
    return np.take_along_axis(best_after, first_reaching, axis=1)


def _mean_over_present_categories(precision: np.ndarray, present: np.ndarray) -> np.ndarray:
    """summarize()'s mean of the precision entries of categories with ground truth, computed as
    ``np.mean`` over the same entries in the same order, for each group of resamples with the
    same categories present."""
    ap = np.full(len(precision), np.nan)
    for pattern in np.unique(present, axis=0):
        rows = (present == pattern).all(axis=1)
        if pattern.any():
            ap[rows] = precision[rows][..., pattern].reshape(rows.sum(), -1).mean(axis=1)
    return ap
