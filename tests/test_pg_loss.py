"""The policy-gradient loss against independent oracles.

- detectron2's own FastRCNNOutputLayers loss (switch off; γ = 1 with c = 0);
- the closed form of eq. 11 / supplement Appendix C for the gradient with fixed advantages;
- the exact r(b) = Σ_a p(a) r(a) δ(a,b) by enumerating every action, each scored by pycocotools;
- hand-made cases for the advantages that must be exactly zero.
"""
import contextlib
import io
import itertools

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import pgdet.modeling.pg.pg_output_layers as pg_output_layers
from pgdet.modeling.pg.pg_output_layers import PGFastRCNNOutputLayers
from pgdet.modeling.pg.policy_gradient import (
    InferenceThresholds, PGAdvantages, PGSettings, compute_advantages,
)

NUM_CLASSES = 3
IMAGE_SIZE = (200, 240)


def _predictor(cls=PGFastRCNNOutputLayers, **pg):
    torch.manual_seed(0)
    kwargs = dict(
        input_shape=ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=NUM_CLASSES,
    )
    return cls(**kwargs, **pg)


def _image(num_gt, num_rois, seed):
    """Proposals with gt_classes/gt_boxes as StandardROIHeads samples them, and the full GT."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gt, 2, generator=g) * 150
    gt_boxes = torch.cat([xy, xy + 20 + torch.rand(num_gt, 2, generator=g) * 40], dim=1)
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt_boxes),
                   gt_classes=torch.randint(NUM_CLASSES, (num_gt,), generator=g))
    match = torch.randint(max(num_gt, 1), (num_rois,), generator=g)
    fg = torch.rand(num_rois, generator=g) < 0.4
    if num_gt:
        boxes = gt_boxes[match] + torch.randn(num_rois, 4, generator=g) * 4
        classes = torch.where(fg, gt.gt_classes[match], torch.full_like(match, NUM_CLASSES))
    else:
        boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0]]).repeat(num_rois, 1)
        classes = torch.full((num_rois,), NUM_CLASSES)
    props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes), gt_classes=classes,
                      gt_boxes=Boxes(gt_boxes[match] if num_gt else boxes))
    props._pg_targets = gt
    return props


def _batch():
    return [_image(5, 40, 1), _image(3, 30, 2), _image(0, 20, 3)]


def test_switch_off_is_detectron2_loss():
    proposals = _batch()
    features = torch.randn(sum(len(p) for p in proposals), 16)
    standard = _predictor(FastRCNNOutputLayers)
    for pg in (dict(pg_enabled=False), dict(pg_enabled=True, pg_gamma=1.0, pg_reward_scale=0.0)):
        ours = _predictor(**pg)
        ours.load_state_dict(standard.state_dict())
        with EventStorage():
            ref = standard.losses(standard(features), proposals)
            got = ours.losses(ours(features), proposals)
        for name in ("loss_cls", "loss_box_reg"):
            torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7)
        grads = [
            torch.autograd.grad(loss["loss_cls"] + loss["loss_box_reg"], m.parameters())
            for loss, m in ((ref, standard), (got, ours))
        ]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("gamma,scale", [(1.0, 1.0), (0.0, 1.0), (1.0, 2.5), (0.5, 0.3)])
def test_gradient_is_eq11_closed_form(monkeypatch, gamma, scale):
    proposals = _batch()
    num_rois = sum(len(p) for p in proposals)
    gt_classes = torch.cat([p.gt_classes for p in proposals])
    fixed = torch.randn(num_rois, generator=torch.Generator().manual_seed(7)) * 0.3
    monkeypatch.setattr(
        pg_output_layers, "compute_advantages",
        lambda *a, **k: PGAdvantages(fixed, torch.zeros(1), torch.zeros(1, 1),
                                     torch.ones(num_rois, dtype=torch.bool)),
    )
    predictor = _predictor(pg_enabled=True, pg_gamma=gamma, pg_reward_scale=scale)
    logits = torch.randn(num_rois, NUM_CLASSES + 1, requires_grad=True)
    deltas = torch.randn(num_rois, NUM_CLASSES * 4) * 0.1
    with EventStorage():
        loss = predictor.losses((logits, deltas), proposals)["loss_cls"]
    (grad,) = torch.autograd.grad(loss, logits)

    # eq. 11 / Appendix C: d L_b / d x_{b,l_b} = (c(r(b) - r') + γ)(p_b - 1), and
    # (c·A + γ) p_j on the other classes; the loss is a mean over the R RoIs.
    p = torch.softmax(logits.detach(), dim=1)
    weight = (scale * fixed + gamma)[:, None]
    expected = weight * (p - torch.nn.functional.one_hot(gt_classes, NUM_CLASSES + 1)) / num_rois
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-8)
    rows = torch.arange(num_rois)
    torch.testing.assert_close(
        grad[rows, gt_classes] * num_rois,
        ((scale * fixed + gamma) * (p[rows, gt_classes] - 1)), rtol=1e-5, atol=1e-7,
    )


def one_image_cocoeval(boxes, scores, classes, gt_boxes, gt_classes, num_classes=NUM_CLASSES):
    """pycocotools' COCOeval, evaluated (per-image matching done), of one image's detections
    (XYXY boxes [n, 4], scores [n], classes [n] in [0, num_classes)) against its GTs;
    detections numbered 1..n in the given order. None without detections (loadRes refuses an
    empty list)."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1}],
        "categories": [{"id": c} for c in range(num_classes)],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": int(c), "iscrowd": 0,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}
            for i, (b, c) in enumerate(zip(gt_boxes.tolist(), gt_classes.tolist()))
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if len(boxes) == 0:
            return None
        dets = np.array([[1, b[0], b[1], b[2] - b[0], b[3] - b[1], s, c]
                         for b, s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist())])
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
    return ev


def _coco_ap(boxes, scores, classes, gt_boxes, gt_classes, num_classes=NUM_CLASSES):
    """pycocotools' stats[0] on one image: the oracle for a detection set's reward."""
    ev = one_image_cocoeval(boxes, scores, classes, gt_boxes, gt_classes, num_classes)
    if ev is None:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    return max(ev.stats[0], 0.0)


@pytest.mark.parametrize("estimator", ["joint", "conditional"])
def test_estimator_converges_to_enumerated_expectation(estimator):
    """8 candidates, all 256 actions enumerated: r(b) exact vs the k-sample Monte-Carlo value."""
    g = torch.Generator().manual_seed(3)
    gt_boxes = torch.tensor([[20.0, 20.0, 80.0, 90.0], [100.0, 40.0, 170.0, 100.0]])
    gt_classes = torch.tensor([0, 1])
    match = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cand = gt_boxes[match] + torch.randn(8, 4, generator=g) * 6
    probs = torch.full((8, NUM_CLASSES + 1), 0.02)
    p_b = torch.tensor([0.9, 0.6, 0.35, 0.15, 0.8, 0.5, 0.3, 0.7])
    probs[torch.arange(8), gt_classes[match]] = p_b
    probs[:, -1] = 1 - probs[:, :-1].sum(1)
    boxes = cand.repeat(1, NUM_CLASSES)
    props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(cand), gt_classes=gt_classes[match])
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt_boxes), gt_classes=gt_classes)

    exact = torch.zeros(8)
    for bits in itertools.product([0, 1], repeat=8):
        chosen = torch.tensor(bits, dtype=torch.bool)
        prob = torch.where(chosen, p_b, 1 - p_b).prod()
        reward = _coco_ap(cand[chosen], p_b[chosen], gt_classes[match][chosen], gt_boxes, gt_classes)
        exact += prob * reward * chosen
    if estimator == "conditional":
        exact /= p_b

    # score threshold 1.0 empties the NMS baseline D: r' = 0 and no candidate is in D, so A_b = r(b)
    settings = PGSettings(num_samples=20000, reward_estimator=estimator)
    pg = compute_advantages([probs], [boxes], [props], [gt], settings,
                            torch.Generator().manual_seed(0), InferenceThresholds(score_thresh=1.0))
    assert pg.baseline_reward.item() == 0.0
    torch.testing.assert_close(pg.advantages, exact, atol=0.012, rtol=0)


def test_zero_advantages_for_nms_selected_background_and_no_gt():
    with_gt, no_gt = _image(4, 30, 11), _image(0, 12, 12)
    num_rois = len(with_gt) + len(no_gt)
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(num_rois, NUM_CLASSES + 1, generator=g) * 3, dim=1)
    boxes = torch.cat([p.proposal_boxes.tensor for p in (with_gt, no_gt)]).repeat(1, NUM_CLASSES)
    pg = compute_advantages(
        list(probs.split([len(with_gt), len(no_gt)])), list(boxes.split([len(with_gt), len(no_gt)])),
        [with_gt, no_gt], [with_gt._pg_targets, no_gt._pg_targets], PGSettings(),
        torch.Generator().manual_seed(1),
    )
    adv = pg.advantages.split([len(with_gt), len(no_gt)])
    assert torch.all(adv[1] == 0), "image without ground truth"
    background = with_gt.gt_classes == NUM_CLASSES
    assert torch.all(adv[0][background] == 0)

    # The NMS baseline, recomputed here with torchvision: a foreground RoI kept with its own class
    import torchvision

    p = probs[: len(with_gt), :-1]
    b = boxes[: len(with_gt)].view(-1, NUM_CLASSES, 4).clamp(min=0)
    b[..., 0::2] = b[..., 0::2].clamp(max=IMAGE_SIZE[1])
    b[..., 1::2] = b[..., 1::2].clamp(max=IMAGE_SIZE[0])
    roi, cls = (p > 0.05).nonzero(as_tuple=True)
    keep = torchvision.ops.batched_nms(b[roi, cls], p[roi, cls], cls, 0.5)[:100]
    in_d = set(zip(roi[keep].tolist(), cls[keep].tolist()))
    selected_fg = [i for i, c in enumerate(with_gt.gt_classes.tolist()) if (i, c) in in_d]
    assert selected_fg, "the case must contain NMS-selected foreground RoIs"
    assert torch.all(adv[0][selected_fg] == 0)
    others = ~background
    others[selected_fg] = False
    assert torch.all(pg.candidate_mask[: len(with_gt)] == others)
    assert torch.any(adv[0][others] != 0)


def test_sampling_reproducible_per_iteration_and_rank():
    predictor = _predictor(pg_enabled=True, pg_seed=5)
    a = torch.rand(100, generator=predictor._generator("cpu", 7))
    b = torch.rand(100, generator=predictor._generator("cpu", 7))
    c = torch.rand(100, generator=predictor._generator("cpu", 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _greedy_nms_with_suppressors(boxes, scores, iou_thresh):
    """Textbook greedy NMS over one class: (kept indices by descending score, {removed: remover})."""
    import torchvision

    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    iou = torchvision.ops.box_iou(boxes, boxes)
    kept, removed_by = [], {}
    for i in order:
        if i in removed_by:
            continue
        kept.append(i)
        for j in order:
            if j not in removed_by and j not in kept and float(iou[i, j]) > iou_thresh:
                removed_by[j] = i
    return kept, removed_by


def test_swap_estimator_against_reference_nms_and_pycocotools():
    """swap: A_b = AP(D with b in place of the box that removed b in greedy NMS, or D + b) - AP(D),
    with D and the removers from a plain NMS loop and every AP from pycocotools. Three images in
    one batch, so their different numbers of swapped sets are padded together, and a fourth made
    by hand where a box under the score threshold is the only one on its object (added to D)."""
    images = [_image(4, 30, seed) for seed in (21, 22, 23)]
    g = torch.Generator().manual_seed(21)
    probs = [torch.softmax(torch.randn(len(p), NUM_CLASSES + 1, generator=g) * 3, dim=1)
             for p in images]
    boxes = [(p.proposal_boxes.tensor + torch.randn(len(p), 4, generator=g) * 3).repeat(
        1, NUM_CLASSES) for p in images]
    # and by hand: RoI 1 (score 0.03, under the threshold) is the only box on the second object
    gt_boxes = torch.tensor([[20.0, 20.0, 80.0, 80.0], [140.0, 100.0, 200.0, 160.0]])
    rois = torch.tensor([[22.0, 21.0, 80.0, 79.0], [143.0, 104.0, 201.0, 158.0],
                         [100.0, 10.0, 130.0, 40.0]])
    lone = Instances(IMAGE_SIZE, proposal_boxes=Boxes(rois),
                     gt_classes=torch.tensor([0, 0, NUM_CLASSES]),
                     gt_boxes=Boxes(gt_boxes[[0, 1, 0]]))
    lone._pg_targets = Instances(IMAGE_SIZE, gt_boxes=Boxes(gt_boxes),
                                 gt_classes=torch.tensor([0, 0]))
    images.append(lone)
    probs.append(torch.tensor([[0.9, 0.03, 0.03, 0.04], [0.03, 0.02, 0.02, 0.93],
                               [0.01, 0.01, 0.01, 0.97]]))
    boxes.append(rois.repeat(1, NUM_CLASSES))
    pg = compute_advantages(probs, boxes, images, [p._pg_targets for p in images],
                            PGSettings(reward_estimator="swap"), torch.Generator().manual_seed(0))
    advantages = pg.advantages.split([len(p) for p in images])
    kinds = {"swapped": 0, "added": 0}
    for image, (props, prob, box) in enumerate(zip(images, probs, boxes)):
        gt = props._pg_targets
        clipped = Boxes(box.view(-1, 4).clone())
        clipped.clip(IMAGE_SIZE)
        clipped = clipped.tensor.view(len(props), NUM_CLASSES, 4)
        det = []  # D as (roi, class): NMS over each class's boxes, then the 0.05 score threshold
        remover = {}  # (roi, class) -> (roi, class) of the kept box that removed it
        for c in range(NUM_CLASSES):
            kept, removed_by = _greedy_nms_with_suppressors(clipped[:, c], prob[:, c], 0.5)
            det += [(i, c) for i in kept if prob[i, c] > 0.05]
            remover.update({(j, c): (i, c) for j, i in removed_by.items()})
        assert len(det) <= 100

        def ap(members):
            rois, classes = (torch.tensor(x) for x in zip(*members))
            return _coco_ap(clipped[rois, classes], prob[rois, classes], classes,
                            gt.gt_boxes.tensor, gt.gt_classes)

        baseline = ap(det)
        assert pg.baseline_reward[image].item() == pytest.approx(baseline, abs=1e-6)
        for b, label in enumerate(props.gt_classes.tolist()):
            if label == NUM_CLASSES or (b, label) in det:
                assert advantages[image][b] == 0
                continue
            winner = remover.get((b, label))
            kind = "swapped" if winner in det else "added"
            members = [d for d in det if d != winner] + [(b, label)]
            kinds[kind] += 1
            expected = ap(members) - baseline
            assert advantages[image][b].item() == pytest.approx(expected, abs=1e-6), (image, b)
    assert kinds["swapped"] and kinds["added"], kinds
    assert advantages[3][1] > 0  # the lone box finds the second object: AP 0.5 -> 1
