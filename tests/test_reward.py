"""image_ap against its oracle: pycocotools' COCOeval run on each image and detection set alone.

Boxes live on a 1/8-pixel grid so float32 holds them exactly and IoUs can land exactly on the
thresholds (a GT of width 20m shrunk to t * 20m has IoU t with it). The random corpus mixes every
kind of detection COCOeval distinguishes; a check on the corpus itself makes sure the awkward kinds
(exact boundary IoUs, detections reaching two GTs, equal IoU with two GTs, > 100 detections of a
class, tied scores) are there.
"""
import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pgdet.modeling.pg.reward import COCO_IOU_THRESHOLDS, image_ap

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # thousands of small calls

NUM_CASES = 320
TOLERANCE = 1e-6
THRESHOLDS = np.linspace(0.5, 0.95, 10)


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------
def _coco(annotations):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 1024, "height": 1024}],
        "categories": [{"id": c} for c in range(1, 12)],
        "annotations": annotations,
    }
    coco.createIndex()
    return coco


def _xywh(box):
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_ap(gt_boxes, gt_classes, det_boxes, det_scores, det_classes, max_dets=100, full=False):
    """COCOeval's stats[0] of one image (-1 without GT). Detections are loaded in the given order.

    ``full=False`` keeps only the area range "all" and maxDets [max_dets] (what stats[0] reads)
    and averages ``precision`` as ``summarize`` does; ``full=True`` runs the default parameters and
    ``summarize`` itself.
    """
    gts = [{"id": i + 1, "image_id": 1, "category_id": int(c) + 1, "bbox": _xywh(b),
            "area": _xywh(b)[2] * _xywh(b)[3], "iscrowd": 0}
           for i, (b, c) in enumerate(zip(gt_boxes, gt_classes))]
    # what COCO.loadRes stores for a bbox result (it cannot load an empty list)
    dts = [{"id": i + 1, "image_id": 1, "category_id": int(c) + 1, "bbox": _xywh(b),
            "area": _xywh(b)[2] * _xywh(b)[3], "iscrowd": 0, "score": float(s)}
           for i, (b, s, c) in enumerate(zip(det_boxes, det_scores, det_classes))]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(_coco(gts), _coco(dts), "bbox")
        if not full:
            evaluator.params.areaRng = [[0, 1e5 ** 2]]
            evaluator.params.areaRngLbl = ["all"]
            evaluator.params.maxDets = [max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        if full:
            evaluator.summarize()
            return float(evaluator.stats[0])
    precision = evaluator.eval["precision"][:, :, :, 0, 0]
    return float(np.mean(precision[precision > -1])) if (precision > -1).any() else -1.0


def oracle(case, max_dets=100):
    """[S] COCOeval stats[0] of each detection set of a case; 0 for an image without GT."""
    aps = []
    for member in case["membership"]:
        ap = coco_ap(case["gt_boxes"], case["gt_classes"], case["det_boxes"][member],
                     case["det_scores"][member], case["det_classes"][member], max_dets)
        aps.append(max(ap, 0.0))
    return np.array(aps)


# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------
def _grid(values):
    return np.round(np.asarray(values, dtype=np.float64) * 8) / 8


def random_case(rng):
    """One image: GT, a pool of detections and 1-4 sets, everything on the 1/8-pixel grid."""
    num_classes = int(rng.integers(1, 6))
    num_gt = int(rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 30]))
    many = rng.random() < 0.1  # > 100 detections of one class
    num_det = int(rng.integers(101, 151)) if many else int(rng.integers(0, 151))
    if many:
        num_classes = 1

    gt = np.zeros((num_gt, 4))
    gt_classes = rng.integers(0, num_classes, num_gt)
    twins = []  # (h, g): GT g is GT h moved right; a box halfway has the same IoU with both
    for g in range(num_gt):
        if g and rng.random() < 0.3:  # a near-copy of an earlier GT: boxes reach both
            h = int(rng.integers(0, g))
            gt[g] = gt[h] + _grid(rng.normal(0, 4, 4))
            gt_classes[g] = gt_classes[h]
        elif g and rng.random() < 0.2:
            h = int(rng.integers(0, g))
            shift = 2 * _grid(rng.uniform(0.02, 0.12) * (gt[h, 2] - gt[h, 0]))
            gt[g] = gt[h] + np.array([shift, 0, shift, 0])
            gt_classes[g] = gt_classes[h]
            twins.append((h, g))
        else:
            x, y = _grid(rng.uniform(0, 800, 2))
            w, h = 20 * rng.integers(1, 9, 2)  # widths of 20m make IoU = t exactly reachable
            gt[g] = [x, y, x + w, y + h]
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)

    det = np.zeros((num_det, 4))
    det_classes = rng.integers(0, num_classes + 1, num_det)  # class num_classes has no GT
    for n in range(num_det):
        kind = rng.choice(["band", "shift", "copy_gt", "copy_det", "random", "between"],
                          p=[0.3, 0.25, 0.1, 0.1, 0.15, 0.1] if num_gt else [0, 0, 0, 0.2, 0.8, 0])
        if (kind == "copy_det" and n == 0) or (kind == "between" and not twins):
            kind = "random"
        g = int(rng.integers(0, max(num_gt, 1)))
        if kind in ("band", "shift", "copy_gt") and rng.random() < 0.85:
            det_classes[n] = gt_classes[g]
        if kind == "band":  # IoU exactly t, or one grid step off, by shrinking a side
            t = rng.choice(THRESHOLDS)
            axis = int(rng.integers(0, 2))
            det[n] = gt[g]
            length = gt[g, axis + 2] - gt[g, axis]
            det[n, axis + 2] = det[n, axis] + _grid(t * length) + rng.choice([0, 0, -0.125, 0.125])
        elif kind == "shift":
            det[n] = gt[g] + _grid(rng.normal(0, 0.1, 4) * np.tile(gt[g, 2:] - gt[g, :2], 2))
        elif kind == "copy_gt":
            det[n] = gt[g]
        elif kind == "between":  # equal IoU with two GTs: COCOeval takes the later one
            h, g = twins[int(rng.integers(0, len(twins)))]
            det[n], det_classes[n] = (gt[h] + gt[g]) / 2, gt_classes[g]
        elif kind == "copy_det":
            source = int(rng.integers(0, n))
            det[n], det_classes[n] = det[source], det_classes[source]
        else:
            x, y = _grid(rng.uniform(0, 800, 2))
            det[n] = [x, y, x + _grid(rng.uniform(4, 200)), y + _grid(rng.uniform(4, 200))]
    det[:, 2:] = np.maximum(det[:, 2:], det[:, :2] + 0.125)

    if rng.random() < 0.4:  # tied scores
        scores = rng.choice([0.25, 0.5, 0.75], num_det)
    else:
        scores = rng.random(num_det)
    num_sets = int(rng.integers(1, 5))
    density = rng.choice([0.0, 0.3, 0.7, 1.0], (num_sets, 1))
    return {
        "gt_boxes": gt.astype(np.float32),
        "gt_classes": gt_classes.astype(np.int64),
        "det_boxes": det.astype(np.float32),
        "det_scores": scores.astype(np.float32),
        "det_classes": det_classes.astype(np.int64),
        "membership": rng.random((num_sets, num_det)) < density,
    }


def padded_image_sets(cases, rng=None):
    """Several cases padded together into image_ap's (and match_sets') first seven arguments:
    det boxes [B, N, 4], scores [B, N], classes [B, N] (-1: padding), membership [B, S, N],
    GT boxes [B, G, 4], classes [B, G], valid [B, G]. Padding GTs get real-looking boxes, so a
    padded GT that were not masked out would change the AP."""
    N = max(len(c["det_scores"]) for c in cases)
    G = max(len(c["gt_classes"]) for c in cases)
    S = max(len(c["membership"]) for c in cases)
    B = len(cases)
    rng = rng or np.random.default_rng(0)
    det_boxes = torch.zeros(B, N, 4)
    det_scores = torch.zeros(B, N)
    det_classes = torch.full((B, N), -1)
    membership = torch.zeros(B, S, N, dtype=torch.bool)
    gt_boxes = torch.from_numpy(_grid(rng.uniform(0, 400, (B, G, 4)))).float().sort(-1).values
    gt_classes = torch.from_numpy(rng.integers(0, 3, (B, G)))
    gt_valid = torch.zeros(B, G, dtype=torch.bool)
    for b, c in enumerate(cases):
        n, g, s = len(c["det_scores"]), len(c["gt_classes"]), len(c["membership"])
        det_boxes[b, :n] = torch.from_numpy(c["det_boxes"])
        det_scores[b, :n] = torch.from_numpy(c["det_scores"])
        det_classes[b, :n] = torch.from_numpy(c["det_classes"])
        membership[b, :s, :n] = torch.from_numpy(c["membership"])
        gt_boxes[b, :g] = torch.from_numpy(c["gt_boxes"])
        gt_classes[b, :g] = torch.from_numpy(c["gt_classes"])
        gt_valid[b, :g] = True
    return det_boxes, det_scores, det_classes, membership, gt_boxes, gt_classes, gt_valid


def as_batch(cases, thresholds=COCO_IOU_THRESHOLDS, max_dets=100, rng=None):
    """image_ap on several cases padded together."""
    return image_ap(*padded_image_sets(cases, rng), thresholds, max_dets)


def single(case, **kwargs):
    return as_batch([case], **kwargs)[0].double().numpy()


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(20180618)
    return [random_case(rng) for _ in range(NUM_CASES)]


@pytest.fixture(scope="module")
def alone(corpus):
    """image_ap of every case called on its own (B = 1)."""
    return [single(c) for c in corpus]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_corpus_holds_the_hard_cases(corpus):
    """The comparison below only means something if the awkward situations occur in it."""
    def iou(a, b):
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = np.clip(rb - lt, 0, None).prod(-1)
        area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)
        return inter / (area(a)[:, None] + area(b)[None] - inter)

    exact = two_gts = equal_two = many = ties = no_gt_class = no_gt = 0
    for c in corpus:
        if len(c["gt_classes"]) == 0:
            no_gt += 1
            continue
        overlap = iou(c["det_boxes"].astype(np.float64), c["gt_boxes"].astype(np.float64))
        overlap *= c["det_classes"][:, None] == c["gt_classes"][None]
        exact += np.isin(overlap, THRESHOLDS).any() or (overlap == 0.9).any()
        two_gts += ((overlap >= 0.5).sum(1) >= 2).any()
        top2 = -np.sort(-overlap, axis=1)[:, :2] if overlap.shape[1] > 1 else np.zeros((1, 2))
        equal_two += ((top2[:, 0] >= 0.5) & (top2[:, 0] == top2[:, 1])).any()
        many += np.bincount(c["det_classes"]).max(initial=0) > 100
        ties += len(np.unique(c["det_scores"])) < len(c["det_scores"])
        no_gt_class += (~np.isin(c["det_classes"], c["gt_classes"])).any()
    assert min(exact, two_gts, equal_two, many, ties, no_gt_class, no_gt) >= 10, (
        exact, two_gts, equal_two, many, ties, no_gt_class, no_gt)


def test_fast_oracle_is_cocoeval_stats0(corpus):
    """The restricted COCOeval used as oracle gives exactly summarize()'s stats[0]."""
    for c in corpus[:12]:
        args = (c["gt_boxes"], c["gt_classes"], c["det_boxes"], c["det_scores"], c["det_classes"])
        assert coco_ap(*args) == coco_ap(*args, full=True)


def test_matches_cocoeval_on_random_cases(corpus, alone):
    """Every detection set of every case, as its own image, agrees with COCOeval to 1e-6."""
    compared = 0
    for i, (c, got) in enumerate(zip(corpus, alone)):
        expected = oracle(c)
        assert np.abs(got - expected).max() <= TOLERANCE, (i, got, expected)
        compared += len(expected)
    assert compared >= 3 * NUM_CASES / 2


def test_thresholds_as_tensor(corpus):
    """Thresholds may come as a float64 tensor instead of a sequence of floats."""
    cases = corpus[:40]
    from_tuple = as_batch(cases)
    from_tensor = as_batch(cases, thresholds=torch.tensor(COCO_IOU_THRESHOLDS, dtype=torch.float64))
    assert torch.equal(from_tuple, from_tensor)


def test_per_class_max_dets_cap(corpus):
    """max_dets keeps the best-scored detections of each class, as COCOeval's maxDets does."""
    for c in [c for c in corpus if len(c["det_scores"]) > 20][:25]:
        assert np.abs(single(c, max_dets=7) - oracle(c, max_dets=7)).max() <= TOLERANCE


def test_batch_equals_single_images(corpus, alone):
    """Images of different sizes padded into one call give what each gives alone."""
    rng = np.random.default_rng(1)
    for first in range(0, NUM_CASES, 16):
        batched = as_batch(corpus[first:first + 16], rng=rng).double().numpy()
        for b, expected in enumerate(alone[first:first + 16]):
            assert np.abs(batched[b, : len(expected)] - expected).max() <= TOLERANCE, first + b
            assert (batched[b, len(expected):] == 0).all()


def test_image_without_gt_scores_zero(corpus):
    case = next(c for c in corpus if len(c["gt_classes"]) == 0 and len(c["det_scores"]) > 0)
    assert case["membership"].any()
    assert (single(case) == 0).all()
    no_gt = image_ap(torch.rand(2, 5, 4), torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.long),
                     torch.ones(2, 3, 5, dtype=torch.bool), torch.zeros(2, 0, 4),
                     torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool),
                     COCO_IOU_THRESHOLDS)
    assert no_gt.shape == (2, 3) and (no_gt == 0).all()


def test_hand_computed_case():
    """Two GTs of class 0 and one of class 1; detections in score order:
    d0 matches GT0 (IoU 1), d1 is a duplicate of GT0 (false positive), d2 has IoU 0.75 with GT1
    (true positive at t <= 0.75), class 1 has no detection.
    Class 0, t <= 0.75: precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1 -> envelope 1 up to recall
    0.5 and 2/3 after: AP = (51 * 1 + 50 * 2/3) / 101. For t > 0.75: 51 / 101. Class 1: 0.
    """
    gt = torch.tensor([[[0, 0, 40, 40], [100, 0, 140, 40], [0, 100, 40, 140]]], dtype=torch.float)
    det = torch.tensor([[[0, 0, 40, 40], [0, 0, 40, 40], [100, 0, 130, 40]]], dtype=torch.float)
    ap = image_ap(det, torch.tensor([[0.9, 0.8, 0.7]]), torch.tensor([[0, 0, 0]]),
                  torch.ones(1, 1, 3, dtype=torch.bool), gt, torch.tensor([[0, 0, 1]]),
                  torch.ones(1, 3, dtype=torch.bool), COCO_IOU_THRESHOLDS)
    low = (51 + 50 * 2 / 3) / 101
    high = 51 / 101
    expected = (6 * low + 4 * high) / 10 / 2
    assert abs(ap.item() - expected) <= TOLERANCE
    assert ap.dtype == torch.float32 and not ap.is_inference()  # usable in the loss's autograd
