"""Rank & Sort loss (Oksuz et al., ICCV 2021) against independent oracles.

- a case of three positives and three negatives worked out by hand from the paper's definitions
  (ranks, errors, targets, pmfs and the identity update, written as plain arithmetic below);
- with hard steps the mean ranking error is 1 − AP, AP computed by sorting;
- a pair-by-pair loop over the definitions on random inputs (ties, smoothing, equal IoUs);
- detectron2's own FastRCNNOutputLayers and StandardROIHeads with the switch off; the softmax
  probabilities for the sigmoid scores; GIoU and the self-balance by hand;
- two training steps of a real model with RS loss on.
"""
import os

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_pg_training import finite_sgd_step

from pgdet.engine import Trainer, build_cfg
from pgdet.modeling.comparators.rank_sort_loss import rank_sort_loss, smoothed_step
from pgdet.modeling.comparators.rs_output_layers import RSFastRCNNOutputLayers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml")
RS_ON = ["MODEL.ROI_HEADS.NAME", "RSROIHeads", "MODEL.RS_LOSS.ENABLED", "True"]

# δ = 0.5, so H(x) = clamp(x + 0.5, 0, 1). Positives A, B, C (logit, IoU); negatives N1-N3.
HAND_LOGITS = [1.0, 1.2, 0.0, 1.1, -0.3, -5.0]
HAND_POSITIVE = [True, True, True, False, False, False]
HAND_IOU = [0.9, 0.5, 0.8, 0.0, 0.0, 0.0]


def _hand_case():
    """Every quantity of the paper for HAND_*, by hand. Returns (ranking mean, sorting mean,
    dL/ds of L = ranking + sorting for the 6 scores)."""
    # each positive's relation with itself is H(0) = 0.5 (the paper's sums run over j = i too)
    # A (s 1.0): H to itself 0.5, to B 0.7, to C 0, to N1 0.6, to N2/N3 0
    rank_a, rank_pos_a, fp_a = 0.5 + 0.7 + 0.6, 0.5 + 0.7, 0.6
    # B (s 1.2): H to itself 0.5, to A 0.3, to C 0, to N1 0.4
    rank_b, rank_pos_b, fp_b = 0.5 + 0.3 + 0.4, 0.5 + 0.3, 0.4
    # C (s 0.0): H to itself 0.5, to A 1, to B 1, to N1 1, to N2 0.2
    rank_c, rank_pos_c, fp_c = 0.5 + 1 + 1 + 1 + 0.2, 0.5 + 1 + 1, 1 + 0.2
    lr_a, lr_b, lr_c = fp_a / rank_a, fp_b / rank_b, fp_c / rank_c
    # sorting: mean (1 - IoU) over the positives at or above; target: only those with IoU >= own
    ls_a = (0.5 * 0.1 + 0.7 * 0.5) / rank_pos_a - 0.5 * 0.1 / 0.5  # target: A alone (IoU 0.9)
    ls_b = (0.5 * 0.5 + 0.3 * 0.1) / rank_pos_b - (0.5 * 0.5 + 0.3 * 0.1) / rank_pos_b  # none
    ls_c = (0.5 * 0.2 + 0.1 + 0.5) / rank_pos_c - (0.5 * 0.2 + 0.1) / 1.5  # target: A and C
    # identity update, /3 positives. Ranking pmfs: A -> N1 (1); B -> N1 (1); C -> N1 1/1.2,
    # N2 0.2/1.2. Sorting pmfs: A -> B (the only one above A with lower IoU); C -> B.
    grad = [
        -lr_a - ls_a,
        -lr_b - ls_b + ls_a + ls_c,
        -lr_c - ls_c,
        lr_a + lr_b + lr_c / 1.2,
        lr_c * 0.2 / 1.2,
        0.0,
    ]
    return (lr_a + lr_b + lr_c) / 3, (ls_a + ls_b + ls_c) / 3, [g / 3 for g in grad]


def _run(logits, positive, iou, delta=0.5):
    logits = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    ranking, sorting = rank_sort_loss(logits, torch.tensor(positive), torch.tensor(
        iou, dtype=torch.float64), delta)
    (ranking + sorting).backward()
    return ranking.item(), sorting.item(), logits.grad


def test_hand_computed_case_values_and_identity_update():
    ranking, sorting, grad = _run(HAND_LOGITS, HAND_POSITIVE, HAND_IOU)
    want_ranking, want_sorting, want_grad = _hand_case()
    assert ranking == pytest.approx(want_ranking, abs=1e-12)  # 0.32315
    assert sorting == pytest.approx(want_sorting, abs=1e-12)  # 0.08444
    assert grad.tolist() == pytest.approx(want_grad, abs=1e-12)
    # B is ranked above two better-localised positives: the sorting update pushes it down
    assert grad[1] > 0 and grad[0] < 0 and grad[2] < 0
    assert grad.sum().item() == pytest.approx(0.0, abs=1e-12)  # every error is spread in full


def test_each_term_backpropagates_its_own_update():
    logits = torch.tensor(HAND_LOGITS, dtype=torch.float64, requires_grad=True)
    ranking, sorting = rank_sort_loss(logits, torch.tensor(HAND_POSITIVE),
                                      torch.tensor(HAND_IOU, dtype=torch.float64))
    (2.0 * sorting).backward()
    ls_a, ls_c = 0.4 / 1.2 - 0.1, 0.7 / 2.5 - 0.2 / 1.5
    assert logits.grad.tolist() == pytest.approx(
        [2 / 3 * g for g in (-ls_a, ls_a + ls_c, -ls_c, 0, 0, 0)], abs=1e-12)


def _average_precision(scores, labels, self_weight=1.0):
    """AP of one ranking: mean over the positives of the precision at their rank, each
    positive counted `self_weight` in its own rank (1: the ordinary AP)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    hits = np.asarray(labels)[order]
    above = np.arange(len(hits))  # examples strictly above each position
    precision = (np.cumsum(hits) - 1 + self_weight) / (above + self_weight)
    return precision[hits].mean()


@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_hard_ranking_error_is_one_minus_ap(delta):
    """Scores 1 apart: every H between two examples is 0 or 1 even with δ = 0.5. With δ = 0,
    (1/|P|) Σ ℓ_R = 1 − AP; with δ = 0.5 each positive counts H(0) = ½ in its own rank, so the
    precision at it is (positives above + ½) / (examples above + ½). Positives sorted by IoU (all
    IoUs equal here) have no sorting error."""
    rng = np.random.default_rng(0)
    self_weight = 1.0 if delta == 0 else 0.5
    for _ in range(5):
        scores = rng.permutation(20).astype(float)
        labels = rng.random(20) < 0.4
        labels[0] = True
        ranking, sorting, _ = _run(scores.tolist(), labels.tolist(), [0.7] * 20, delta)
        assert ranking == pytest.approx(
            1 - _average_precision(scores, labels, self_weight), abs=1e-12)
        assert sorting == 0.0


def test_a_positive_counts_half_in_its_own_rank_with_the_smoothed_step():
    """One positive and one negative at equal logits, δ = 0.5: H(x_ij) = H(0) = ½ for both
    terms of rank(i) = H(x_ii) + H(x_ij), so ℓ_R = ½ / (½ + ½) = ½, spread in full on the
    negative: gradients (−½, +½) (the paper's sums; the authors' code agrees). Counting the
    positive as 1 in its own rank would give ⅓ and (−⅓, +⅓)."""
    ranking, sorting, grad = _run([0.2, 0.2], [True, False], [0.8, 0.0])
    assert ranking == pytest.approx(0.5, abs=1e-12)
    assert sorting == 0.0
    assert grad.tolist() == pytest.approx([-0.5, 0.5], abs=1e-12)


def test_perfect_ranking_and_sorting_has_no_loss_and_no_gradient():
    # positives above every negative, in decreasing IoU, all more than δ apart
    ranking, sorting, grad = _run([5.0, 4.0, 3.0, 1.0, 0.0], [True, True, True, False, False],
                                  [0.95, 0.8, 0.6, 0, 0])
    assert ranking == 0 and sorting == 0 and grad.abs().max() == 0


def _loop_oracle(logits, positive, iou, delta):
    """The definitions pair by pair (module docstring of rank_sort_loss), for any input."""
    def h(x):
        return float(x >= 0) if delta == 0 else min(max(x / (2 * delta) + 0.5, 0.0), 1.0)

    pos = [i for i, p in enumerate(positive) if p]
    neg = [j for j, p in enumerate(positive) if not p]
    grad = [0.0] * len(logits)
    ranking, sorting = 0.0, 0.0
    for i in pos:
        hij = {j: h(logits[j] - logits[i]) for j in range(len(logits))}  # H(x_ii) = H(0)
        fp = sum(hij[j] for j in neg)
        rank_pos = sum(hij[j] for j in pos)
        l_r = fp / (rank_pos + fp)
        target_set = [j for j in pos if iou[j] >= iou[i]]
        l_s = (sum(hij[j] * (1 - iou[j]) for j in pos) / rank_pos
               - sum(hij[j] * (1 - iou[j]) for j in target_set)
               / sum(hij[j] for j in target_set))
        ranking += l_r
        sorting += l_s
        if fp > 0:
            grad[i] -= l_r
            for j in neg:
                grad[j] += l_r * hij[j] / fp
        lower = [j for j in pos if iou[j] < iou[i]]
        mass = sum(hij[j] for j in lower)
        if mass > 0:
            grad[i] -= l_s
            for j in lower:
                grad[j] += l_s * hij[j] / mass
    n = len(pos)
    return ranking / n, sorting / n, [g / n for g in grad]


@pytest.mark.parametrize("delta", [0.0, 0.25, 0.5])
def test_matrices_equal_pairwise_definitions_on_random_inputs(delta):
    rng = np.random.default_rng(1)
    for _ in range(4):
        m = 14
        logits = np.round(rng.normal(0, 1, m), 1)  # rounded: ties and exact H boundaries
        positive = rng.random(m) < 0.4
        positive[:2] = True
        iou = np.where(positive, np.round(rng.uniform(0.5, 1.0, m), 1), 0.0)  # equal IoUs too
        ranking, sorting, grad = _run(logits.tolist(), positive.tolist(), iou.tolist(), delta)
        want = _loop_oracle(logits.tolist(), positive.tolist(), iou.tolist(), delta)
        assert ranking == pytest.approx(want[0], abs=1e-12)
        assert sorting == pytest.approx(want[1], abs=1e-12)
        assert grad.tolist() == pytest.approx(want[2], abs=1e-12)


def test_no_positives_gives_zero_loss_and_gradient():
    ranking, sorting, grad = _run([0.3, -1.0], [False, False], [0.0, 0.0])
    assert ranking == 0 and sorting == 0 and grad.abs().max() == 0


def test_smoothed_step_shape():
    x = torch.tensor([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    assert smoothed_step(x, 0.5).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert smoothed_step(x, 0.0).tolist() == [0, 0, 0, 1, 1, 1, 1]


# ---- the box predictor ----

NUM_CLASSES = 2
SIZE = (100, 120)


def _predictor(cls, **kwargs):
    torch.manual_seed(0)
    return cls(input_shape=ShapeSpec(channels=8), num_classes=NUM_CLASSES,
               box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)), **kwargs)


def _proposals():
    """One image: GT A class 0 [10,10,50,50], GT B class 1 [60,20,100,80]; RoIs: two on A, one
    on B, two background."""
    boxes = torch.tensor([[10.0, 10, 50, 50], [14, 10, 50, 50], [60, 20, 100, 70],
                          [0, 60, 30, 90], [70, 85, 110, 98]])
    gt = torch.tensor([[10.0, 10, 50, 50], [10, 10, 50, 50], [60, 20, 100, 80],
                       [10, 10, 50, 50], [60, 20, 100, 80]])
    return [Instances(SIZE, proposal_boxes=Boxes(boxes), gt_boxes=Boxes(gt),
                      gt_classes=torch.tensor([0, 0, 1, 2, 2]))]


def test_switch_off_is_detectron2_loss_and_softmax():
    rs = _predictor(RSFastRCNNOutputLayers, rs_enabled=False)
    d2 = _predictor(FastRCNNOutputLayers)
    features = torch.randn(5, 8)
    proposals = _proposals()
    with EventStorage():
        got = rs.losses(rs(features), proposals)
        want = d2.losses(d2(features), proposals)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].item() == pytest.approx(want[key].item(), rel=1e-7)
    got_probs = rs.predict_probs(rs(features), proposals)[0]
    assert torch.allclose(got_probs, d2.predict_probs(d2(features), proposals)[0])


def test_sigmoid_scores_are_softmax_class_vs_background():
    """A softmax-trained classifier's weights give sigmoid(z_k − z_bg) = p_k / (p_k + p_bg)."""
    rs = _predictor(RSFastRCNNOutputLayers, rs_enabled=True)
    features = torch.randn(5, 8)
    probs = rs.predict_probs(rs(features), _proposals())[0]
    softmax = torch.softmax(rs(features)[0], dim=1)
    assert torch.allclose(probs[:, :-1], softmax[:, :-1] / (softmax[:, :-1] + softmax[:, -1:]),
                          atol=1e-6)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_rs_losses_by_hand_with_zero_deltas():
    """Zero box deltas: predicted box = proposal, so the positives' IoUs, GIoUs (no enclosing
    gap: each proposal shares the GT's hull) and the RS loss follow from the boxes by hand."""
    rs = _predictor(RSFastRCNNOutputLayers, rs_enabled=True, rs_self_balance=False)
    with torch.no_grad():
        rs.bbox_pred.weight.zero_()
        rs.bbox_pred.bias.zero_()
    proposals = _proposals()
    scores = torch.tensor([[2.0, 0.0, 1.0], [1.5, 0.2, 0.5], [0.1, 0.9, 0.0],
                           [1.0, -1.0, 0.5], [0.3, 0.4, 0.1]], requires_grad=True)
    deltas = torch.zeros(5, 4 * NUM_CLASSES, requires_grad=True)
    with EventStorage():
        losses = rs.losses((scores, deltas), proposals)
    ious = [1.0, _iou([14, 10, 50, 50], [10, 10, 50, 50]), _iou([60, 20, 100, 70], [60, 20, 100, 80])]
    assert ious[1:] == pytest.approx([0.9, 50 / 60])
    # logits z_k − z_bg; positives (0, 0), (1, 0), (2, 1); the other 7 pairs are negatives
    logits = (scores[:, :2] - scores[:, 2:]).detach().flatten().tolist()
    positive = [True, False, True, False, False, True, False, False, False, False]
    quality = [1.0, 0, 0.9, 0, 0, 50 / 60, 0, 0, 0, 0]
    want_r, want_s, _ = _loop_oracle(logits, positive, quality, 0.5)
    assert losses["loss_cls"].item() == pytest.approx(want_r + want_s, rel=1e-6)
    # GIoU loss = 1 − IoU here; weights sigmoid(logit of the GT class)
    weights = torch.sigmoid(torch.tensor([logits[0], logits[2], logits[5]]))
    want_box = (weights * (1 - torch.tensor(ious))).sum() / weights.sum()
    assert losses["loss_box_reg"].item() == pytest.approx(want_box.item(), rel=1e-6)


def test_self_balance_gives_the_box_loss_the_rs_loss_magnitude():
    balanced = _predictor(RSFastRCNNOutputLayers, rs_enabled=True)
    plain = _predictor(RSFastRCNNOutputLayers, rs_enabled=True, rs_self_balance=False)
    features = torch.randn(5, 8, requires_grad=True)
    with EventStorage():
        got = balanced.losses(balanced(features), _proposals())
        ref = plain.losses(plain(features), _proposals())
    assert got["loss_box_reg"].item() == pytest.approx(got["loss_cls"].item(), rel=1e-6)
    # the weight is a constant: the gradient is the plain box loss's, scaled by L_RS / L_box
    scale = ref["loss_cls"].item() / ref["loss_box_reg"].item()
    (g,) = torch.autograd.grad(got["loss_box_reg"], balanced.bbox_pred.weight)
    (r,) = torch.autograd.grad(ref["loss_box_reg"], plain.bbox_pred.weight)
    assert torch.allclose(g, scale * r, rtol=1e-5, atol=1e-9)
    # the background logit is a fixed reference: no gradient from the RS loss reaches it
    (c,) = torch.autograd.grad(got["loss_cls"], balanced.cls_score.weight)
    assert c[-1].abs().max() == 0 and c[:-1].abs().max() > 0


# ---- the ROI heads and a real model ----

def _demo_model(opts):
    cfg = build_cfg(DEMO, ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    return model


def _batch():
    size = (128, 160)
    boxes = torch.tensor([[20.0, 30.0, 70.0, 90.0], [90.0, 10.0, 150.0, 60.0]])
    inst = Instances(size, gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 3]))
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, *size, generator=g) * 255, "instances": inst,
             "height": size[0], "width": size[1]}]


def test_heads_switched_off_are_standard_roi_heads():
    """RSROIHeads with RS off: detectron2's sampling and losses (StandardROIHeads, same weights
    and the same random stream)."""
    rs = _demo_model(["MODEL.ROI_HEADS.NAME", "RSROIHeads"])
    standard = _demo_model(["MODEL.ROI_HEADS.NAME", "StandardROIHeads"])
    standard.load_state_dict(rs.state_dict())
    results = []
    for model in (rs, standard):
        torch.manual_seed(1)
        with EventStorage():
            results.append({k: v.item() for k, v in model(_batch()).items()})
    assert results[0] == results[1]


def test_sampling_free_keeps_every_proposal():
    model = _demo_model(RS_ON)
    heads = model.roi_heads
    proposals = [Instances((128, 160), proposal_boxes=Boxes(torch.tensor(
        [[0.0, 0, 10, 10]] * 300 + [[20.0, 30, 70, 88]] * 5)),
        objectness_logits=torch.zeros(305))]
    targets = [_batch()[0]["instances"]]
    with EventStorage():
        sampled = heads.label_and_sample_proposals(proposals, targets)
    # all 305 proposals and the 2 appended GT boxes, though BATCH_SIZE_PER_IMAGE is 32
    assert len(sampled[0]) == 307 and int((sampled[0].gt_classes < 4).sum()) == 7
    off = _demo_model(RS_ON + ["MODEL.RS_LOSS.SAMPLING_FREE", "False"]).roi_heads
    with EventStorage():
        assert len(off.label_and_sample_proposals(proposals, targets)[0]) == 32


def test_two_training_steps_with_rs_loss_are_finite():
    model = _demo_model(RS_ON)
    with EventStorage() as storage:
        for _ in range(2):
            losses = finite_sgd_step(model, _batch(), storage)
        assert storage.history("rs/num_positives").latest() > 0
        assert losses["loss_box_reg"].item() == pytest.approx(losses["loss_cls"].item(), rel=1e-5)
    model.eval()
    with torch.no_grad():
        (out,) = model(_batch())
    scores = out["instances"].scores
    assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("opts,key", [
    (["MODEL.RS_LOSS.DELTA", "-0.5"], "MODEL.RS_LOSS.DELTA"),
    (["MODEL.RS_LOSS.BOX_LOSS", "l1"], "MODEL.RS_LOSS.BOX_LOSS"),
    (["MODEL.PG.ENABLED", "True"], "MODEL.PG.ENABLED"),
    (["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", "True"], "USE_SIGMOID_CE"),
    (["MODEL.ROI_HEADS.NAME", "PGROIHeads"], "RSROIHeads"),
])
def test_invalid_rs_options_fail_at_build_time(opts, key):
    with pytest.raises(ValueError) as e:
        Trainer.build_model(build_cfg(DEMO, [*RS_ON, *opts]))
    assert key in str(e.value)


def test_composes_with_the_papers_strided_conv_fc_box_head():
    """RSROIHeads builds whatever MODEL.ROI_BOX_HEAD names: the paper's R-101 head trains."""
    cfg = build_cfg(os.path.join(REPO, "pgdet", "configs", "frcnn_R101.yaml"), [
        *RS_ON, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN",
        "MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert type(model.roi_heads.box_head).__name__ == "StridedConvFCHead"
    with EventStorage():
        losses = model(_batch())
    assert torch.isfinite(sum(losses.values()))
    assert losses["loss_cls"].item() > 0
