"""Soft-NMS against a plain reference of Bodla et al. 2017, Algorithm 1, written here.

The reference runs the paper's loop (pick the max, decay the rest) over one class at a time in
numpy; the candidate handling (non-finite rows, clipping, score threshold, top-k after decay) is
re-implemented here from detectron2's fast_rcnn_inference_single_image.
"""
import math

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances

from pgdet.config import add_pgdet_config
from pgdet.modeling.comparators.soft_nms import check_soft_nms_config, fast_rcnn_inference_soft_nms


def _iou(a, b):
    """IoU of two [x0, y0, x1, y1] boxes (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_soft_nms_one_class(boxes, scores, method, nt, sigma):
    """Bodla et al. Algorithm 1 verbatim: returns [(index, score at selection)]."""
    remaining = list(range(len(scores)))
    s = [float(x) for x in scores]
    kept = []
    while remaining:
        m = max(remaining, key=lambda i: s[i])
        kept.append((m, s[m]))
        remaining.remove(m)
        for i in remaining:
            iou = _iou(boxes[m], boxes[i])
            if method == "linear":
                if iou > nt:
                    s[i] *= 1 - iou
            else:
                s[i] *= math.exp(-iou * iou / sigma)
    return kept


def _reference_image(boxes, scores, shape, score_thresh, topk, method, nt, sigma, prune):
    """Detections of one image as a list of (roi, class, score, box), best first."""
    boxes = boxes.detach().numpy().astype(np.float64)
    scores = scores.detach().numpy().astype(np.float64)
    h, w = shape
    num_classes = scores.shape[1] - 1
    dets = []
    for k in range(num_classes):
        rois = [
            r for r in range(len(scores))
            if np.isfinite(boxes[r]).all() and np.isfinite(scores[r]).all()
            and scores[r, k] > score_thresh
        ]
        col = 0 if boxes.shape[1] == 4 else 4 * k
        cls_boxes = [
            np.clip(boxes[r, col : col + 4], 0, [w, h, w, h]).tolist() for r in rois
        ]
        for i, s in _reference_soft_nms_one_class(cls_boxes, scores[rois, k], method, nt, sigma):
            if s >= prune:
                dets.append((rois[i], k, s, cls_boxes[i]))
    dets.sort(key=lambda d: -d[2])
    return dets if topk < 0 else dets[:topk]


def _random_image(gen, num_rois, num_classes, class_agnostic, shape=(60, 80)):
    """Clustered boxes (so they overlap), some crossing the border, and softmax scores."""
    h, w = shape
    cols = 1 if class_agnostic else num_classes
    centres = torch.rand(num_rois, cols, 2, generator=gen) * torch.tensor([w, h])
    centres = centres // 20 * 20 + torch.rand(num_rois, cols, 2, generator=gen) * 6
    sizes = 10 + torch.rand(num_rois, cols, 2, generator=gen) * 30
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=2).view(num_rois, cols * 4)
    scores = torch.softmax(torch.randn(num_rois, num_classes + 1, generator=gen) * 2, dim=1)
    return boxes, scores


def _assert_matches(result, kept_rois, expected):
    assert len(result) == len(expected) == len(kept_rois)
    got = sorted(
        zip(kept_rois.tolist(), result.pred_classes.tolist(), result.scores.tolist(),
            result.pred_boxes.tensor.tolist()),
        key=lambda d: (d[0], d[1]),
    )
    want = sorted(expected, key=lambda d: (d[0], d[1]))
    for g, e in zip(got, want):
        assert g[:2] == e[:2]
        assert g[2] == pytest.approx(e[2], rel=1e-5, abs=1e-7)
        assert g[3] == pytest.approx(e[3], abs=1e-4)
    # detectron2 returns detections by decreasing score
    assert torch.all(result.scores[:-1] >= result.scores[1:])


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("class_agnostic", [False, True])
def test_matches_reference_on_random_images(method, class_agnostic):
    gen = torch.Generator().manual_seed(1 if class_agnostic else 0)
    shapes = [(60, 80), (50, 50), (70, 40)]
    for trial in range(4):
        boxes, scores = zip(*[_random_image(gen, 40, 4, class_agnostic, s) for s in shapes])
        boxes, scores = list(boxes), list(scores)
        # a non-finite RoI is ignored; the returned indices still refer to the input rows
        boxes[0][3, 0] = float("nan")
        scores[1][5, 2] = float("inf")
        topk = [-1, 25, 1000, 7][trial]
        prune = [0.001, 0.05, 0.0, 0.2][trial]
        options = dict(method=method, iou_thresh=0.3, sigma=0.5, prune_thresh=prune)
        results, kept = fast_rcnn_inference_soft_nms(boxes, scores, shapes, 0.05, topk, **options)
        for i, shape in enumerate(shapes):
            expected = _reference_image(
                boxes[i], scores[i], shape, 0.05, topk, method, 0.3, 0.5, options["prune_thresh"]
            )
            assert len(expected) > 5
            assert results[i].image_size == shape
            _assert_matches(results[i], kept[i], expected)


def test_decay_actually_changes_scores():
    """Guard against a trivially passing comparison: some scores are decayed, none grow."""
    gen = torch.Generator().manual_seed(3)
    boxes, scores = _random_image(gen, 40, 3, False)
    results, kept = fast_rcnn_inference_soft_nms(
        [boxes], [scores], [(60, 80)], 0.05, -1, method="gaussian", iou_thresh=0.3, sigma=0.5,
        prune_thresh=0.0,
    )
    original = scores[kept[0], results[0].pred_classes]
    assert torch.all(results[0].scores <= original + 1e-7)
    assert (results[0].scores < original - 1e-3).sum() > 3
    # with no pruning, every candidate above the score threshold is kept
    assert len(results[0]) == int((scores[:, :-1] > 0.05).sum())


def test_topk_applies_after_decay():
    """A (0.9) and B (0.85) overlap with IoU 0.81; C (0.8) is apart. Linear decay leaves B at
    0.85 * 0.19 = 0.1615, so the top 2 are A and C, not the top 2 by raw score (A, B)."""
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 8.1], [30, 30, 40, 40.0]])
    scores = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.8, 0.2]])
    options = dict(method="linear", iou_thresh=0.3, sigma=0.5, prune_thresh=0.001)
    results, kept = fast_rcnn_inference_soft_nms([boxes], [scores], [(50, 50)], 0.05, 2, **options)
    assert kept[0].tolist() == [0, 2]
    assert results[0].scores.tolist() == pytest.approx([0.9, 0.8])
    results, kept = fast_rcnn_inference_soft_nms([boxes], [scores], [(50, 50)], 0.05, -1, **options)
    assert kept[0].tolist() == [0, 2, 1]
    assert results[0].scores.tolist() == pytest.approx([0.9, 0.8, 0.85 * 0.19])


def test_empty_image():
    boxes, scores = torch.zeros(3, 8), torch.tensor([[0.01, 0.01, 0.98]]).repeat(3, 1)
    results, kept = fast_rcnn_inference_soft_nms(
        [boxes], [scores], [(10, 10)], 0.05, 100, method="linear", iou_thresh=0.3, sigma=0.5,
        prune_thresh=0.001,
    )
    assert len(results[0]) == 0 and kept[0].numel() == 0
    assert results[0].pred_boxes.tensor.shape == (0, 4)


def _predictor(soft_nms_enabled):
    from pgdet.modeling.pg.pg_output_layers import PGFastRCNNOutputLayers

    cfg = add_pgdet_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.SOFT_NMS.ENABLED = soft_nms_enabled
    cfg.MODEL.SOFT_NMS.METHOD = "gaussian"
    torch.manual_seed(0)
    predictor = PGFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    torch.nn.init.normal_(predictor.cls_score.weight, std=1.0)
    torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.1)
    return predictor


def _proposals(gen):
    proposals = []
    for shape in [(60, 80), (50, 50)]:
        inst = Instances(shape)
        inst.proposal_boxes = Boxes(_random_image(gen, 30, 1, True, shape)[0])
        proposals.append(inst)
    return proposals


def _run_predictor(soft_nms: bool, seed: int):
    """The predictor's inference on random features, and the boxes/probabilities it decoded."""
    gen = torch.Generator().manual_seed(seed)
    predictor = _predictor(soft_nms)
    proposals = _proposals(gen)
    with torch.no_grad():
        predictions = predictor(torch.randn(60, 8, generator=gen))
        results, kept = predictor.inference(predictions, proposals)
    boxes = predictor.predict_boxes(predictions, proposals)
    probs = predictor.predict_probs(predictions, proposals)
    return proposals, results, kept, boxes, probs


def test_greedy_nms_unchanged_when_soft_nms_off():
    proposals, results, kept, boxes, probs = _run_predictor(False, seed=5)
    expected, expected_kept = fast_rcnn_inference(
        boxes, probs, [p.image_size for p in proposals], 0.05, 0.5, 100
    )
    for r, e, k, ek in zip(results, expected, kept, expected_kept):
        assert len(e) > 0
        assert torch.equal(k, ek)
        assert torch.equal(r.pred_classes, e.pred_classes)
        assert torch.equal(r.scores, e.scores)
        assert torch.equal(r.pred_boxes.tensor, e.pred_boxes.tensor)


def test_predictor_uses_soft_nms_when_enabled():
    proposals, results, kept, boxes, probs = _run_predictor(True, seed=6)
    for i, p in enumerate(proposals):
        expected = _reference_image(
            boxes[i], probs[i], p.image_size, 0.05, 100, "gaussian", 0.3, 0.5, 0.001
        )
        _assert_matches(results[i], kept[i], expected)


@pytest.mark.parametrize(
    "key,value",
    [("METHOD", "cubic"), ("IOU_THRESH", 0.0), ("IOU_THRESH", 1.0), ("SIGMA", 0.0),
     ("SCORE_THRESH", -0.1), ("SCORE_THRESH", 1.0)],
)
def test_config_check_names_the_key(key, value):
    cfg = add_pgdet_config(get_cfg())
    check_soft_nms_config(cfg)  # the defaults are valid
    cfg.MODEL.SOFT_NMS[key] = value
    with pytest.raises(ValueError, match=f"MODEL.SOFT_NMS.{key}"):
        check_soft_nms_config(cfg)
