"""The estimators and options of the policy gradient (issue: what distorts the signal) against
independent oracles: every action enumerated and scored by pycocotools, textbook NMS loops, and
hand-made cases. Each test here fails on pgdet 0.2's compute_advantages, where noted."""
import functools
import itertools

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_pg_loss import IMAGE_SIZE, NUM_CLASSES, _coco_ap, _greedy_nms_with_suppressors, _image

import pgdet.modeling.pg.pg_options as pg_options
import pgdet.modeling.pg.pg_output_layers as pg_output_layers
from pgdet.config import add_pgdet_config
from pgdet.modeling import PGROIHeads
from pgdet.modeling.pg.pg_output_layers import PGFastRCNNOutputLayers
from pgdet.modeling.pg.policy_gradient import (
    FROM_GT_FIELD, REWARD_ESTIMATORS, InferenceThresholds, PGAdvantages, PGSettings, _cap_and_nms,
    compute_advantages,
)

# ---- one image, 8 candidates on 2 objects: every one of the 256 actions can be enumerated ----
GT_BOXES = torch.tensor([[20.0, 20.0, 80.0, 90.0], [100.0, 40.0, 170.0, 100.0]])
GT_CLASSES = torch.tensor([0, 1])
MATCH = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
P_B = torch.tensor([0.9, 0.6, 0.35, 0.15, 0.8, 0.5, 0.3, 0.7])


def _enumerable_case():
    cand = GT_BOXES[MATCH] + torch.randn(8, 4, generator=torch.Generator().manual_seed(3)) * 6
    probs = torch.full((8, NUM_CLASSES + 1), 0.02)
    probs[torch.arange(8), GT_CLASSES[MATCH]] = P_B
    probs[:, -1] = 1 - probs[:, :-1].sum(1)
    props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(cand), gt_classes=GT_CLASSES[MATCH])
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(GT_BOXES), gt_classes=GT_CLASSES)
    return cand, probs, props, gt


@functools.lru_cache(maxsize=None)
def _action_rewards(nms: bool):
    """{action bits: pycocotools AP of the action's detection set} for all 256 actions; with
    `nms`, the set is the action after class-wise greedy NMS at 0.5 (torchvision)."""
    cand = _enumerable_case()[0]
    classes = GT_CLASSES[MATCH]
    rewards = {}
    for bits in itertools.product([0, 1], repeat=8):
        chosen = torch.tensor(bits, dtype=torch.bool).nonzero(as_tuple=True)[0]
        if nms and len(chosen):
            chosen = chosen[torchvision.ops.batched_nms(cand[chosen], P_B[chosen],
                                                        classes[chosen], 0.5)]
        rewards[bits] = _coco_ap(cand[chosen], P_B[chosen], classes[chosen], GT_BOXES, GT_CLASSES)
    return rewards


def _expected_reward(p: torch.Tensor, nms: bool) -> torch.Tensor:
    """E[r] = Σ_a Π_b p_b^[b∈a] (1 − p_b)^[b∉a] r(a), a polynomial in p (differentiable)."""
    total = p.new_zeros(())
    for bits, reward in _action_rewards(nms).items():
        chosen = torch.tensor(bits, dtype=torch.bool)
        total = total + torch.where(chosen, p, 1 - p).prod() * reward
    return total


def _monte_carlo(**settings):
    """The estimator with 20000 actions; score threshold 1.0 empties D (r' = 0)."""
    cand, probs, props, gt = _enumerable_case()
    pg = compute_advantages([probs], [cand.repeat(1, NUM_CLASSES)], [props], [gt],
        PGSettings(num_samples=20000, **settings),
        torch.Generator().manual_seed(0), InferenceThresholds(score_thresh=1.0))
    assert pg.baseline_reward.item() == 0.0
    return pg


@pytest.mark.parametrize("sample_nms", [False, True])
def test_reinforce_is_the_exact_policy_gradient(sample_nms):
    """A_b = p_b ∂E[r]/∂p_b, the derivative taken by autograd through the enumerated expectation
    (new estimator)."""
    p = P_B.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_expected_reward(p, sample_nms), p)
    pg = _monte_carlo(reward_estimator="reinforce", sample_nms=sample_nms)
    torch.testing.assert_close(pg.advantages, P_B * grad, atol=0.015, rtol=0)
    assert pg.candidate_mask.all()


def test_sample_nms_counts_the_raw_bernoulli_draw():
    """conditional with SAMPLE_NMS: r(b) = E[r(NMS(a)) | b drawn], not E[... | b survived NMS]
    (pgdet 0.2 counted b only where it survived, which this case tells apart by > 0.05)."""
    rewards = _action_rewards(True)
    drawn = torch.zeros(8, dtype=torch.float64)
    survived = torch.zeros(8, dtype=torch.float64)
    survived_prob = torch.zeros(8, dtype=torch.float64)
    cand = _enumerable_case()[0]
    for bits, reward in rewards.items():
        chosen = torch.tensor(bits, dtype=torch.bool)
        prob = float(torch.where(chosen, P_B, 1 - P_B).prod())
        drawn += prob * reward * chosen
        idx = chosen.nonzero(as_tuple=True)[0]
        kept = idx[torchvision.ops.batched_nms(cand[idx], P_B[idx], GT_CLASSES[MATCH][idx], 0.5)]
        mask = torch.zeros(8, dtype=torch.bool)
        mask[kept] = True
        survived += prob * reward * mask
        survived_prob += prob * mask
    exact = (drawn / P_B.double()).float()
    assert (exact - (survived / survived_prob).float()).abs().max() > 0.05
    pg = _monte_carlo(reward_estimator="conditional", sample_nms=True)
    torch.testing.assert_close(pg.advantages, exact, atol=0.012, rtol=0)


def test_sampled_mean_baseline_and_conditional_estimate_by_hand():
    """k = 3 actions redrawn here from the same generator, each scored by pycocotools:
    r' = mean r(a_j), A_b = mean of r(a_j) over the actions holding b − r' (0 if none does).
    (``joint`` with this baseline is rejected at build time: tests/test_pg_inference_sets.py.)"""
    cand, probs, props, gt = _enumerable_case()
    draws = torch.rand((3, 8), generator=torch.Generator().manual_seed(4)) < P_B
    rewards = torch.tensor([_action_rewards(False)[tuple(int(x) for x in row)] for row in draws])
    pg = compute_advantages([probs], [cand.repeat(1, NUM_CLASSES)], [props], [gt],
                            PGSettings(num_samples=3, reward_estimator="conditional",
                                       baseline="sampled_mean"),
                            torch.Generator().manual_seed(4), InferenceThresholds(score_thresh=1.0))
    assert pg.baseline_reward.item() == pytest.approx(rewards.mean().item(), abs=1e-6)
    times = draws.sum(0)
    expected = (rewards[:, None] * draws).sum(0) / times.clamp(min=1) - rewards.mean()
    expected = torch.where(times > 0, expected, torch.zeros_like(expected)).float()
    torch.testing.assert_close(pg.advantages, expected, atol=1e-6, rtol=0)


def test_detection_cap_keeps_the_best_scores_of_each_action():
    """150 candidates, cap 100: each action keeps its 100 highest-scoring drawn boxes."""
    g = torch.Generator().manual_seed(9)
    scores = torch.rand(150, generator=g)
    drawn = torch.rand((4, 150), generator=g) < 0.9
    boxes = torch.rand(150, 4, generator=g)
    capped = _cap_and_nms(drawn, scores, boxes, torch.zeros(150, dtype=torch.long),
                          PGSettings(max_detections=100), nms_thresh=0.5)
    for action in range(4):
        chosen = sorted(drawn[action].nonzero().flatten().tolist(), key=lambda b: -scores[b])
        assert len(chosen) > 100
        assert set(capped[action].nonzero().flatten().tolist()) == set(chosen[:100])


# ---- empty cases: every estimator and option ----
def _hard_cases():
    """A batch of: an image whose D is empty (every score under the threshold), one without
    candidates (only background RoIs), one whose candidates are all in D, one without GT."""
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(GT_BOXES), gt_classes=GT_CLASSES)
    rois = GT_BOXES + torch.tensor([[2.0, 1.0, -1.0, 2.0], [1.0, -2.0, 2.0, 1.0]])
    images, probs = [], []
    for labels, fg_prob, has_gt in (([0, 1], 0.01, True), ([3, 3], 0.6, True),
                                    ([0, 1], 0.9, True), ([3, 3], 0.5, False)):
        props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(rois),
                          gt_classes=torch.tensor(labels))
        props._pg_targets = gt if has_gt else gt[:0]
        prob = torch.full((2, NUM_CLASSES + 1), 0.001)
        prob[torch.arange(2), GT_CLASSES] = fg_prob
        prob[:, -1] = 1 - prob[:, :-1].sum(1)
        images.append(props)
        probs.append(prob)
    return images, probs, [r.repeat(1, NUM_CLASSES) for r in [rois] * 4]


@pytest.mark.parametrize("estimator", REWARD_ESTIMATORS)
@pytest.mark.parametrize("options", [
    {}, {"kept_box_credit": True}, {"advantage_norm": "image_max"},
    {"suppressor_credit": True, "kept_box_credit": True},
])
def test_empty_baseline_no_candidates_and_all_in_baseline(estimator, options):
    """pgdet 0.2's swap raised IndexError on an image with an empty D."""
    if options.get("suppressor_credit") and estimator != "swap":
        pytest.skip("suppressor credit needs swap")
    images, probs, boxes = _hard_cases()
    pg = compute_advantages(probs, boxes, images, [p._pg_targets for p in images],
                            PGSettings(reward_estimator=estimator, num_samples=8, **options),
                            torch.Generator().manual_seed(0))
    adv = pg.advantages.view(4, 2)
    assert torch.isfinite(adv).all()
    assert pg.baseline_reward.tolist()[0] == 0.0  # empty D
    assert torch.all(adv[3] == 0), "image without ground truth"
    if not options.get("kept_box_credit"):
        assert torch.all(adv[1] == 0), "no candidates"
        if estimator != "reinforce":
            assert torch.all(adv[2] == 0), "all candidates in D"
    if estimator == "swap" and not options:
        # empty D: each candidate is added alone, A_b = AP({b}) by pycocotools
        expected = [_coco_ap(boxes[0][b:b + 1, :4], probs[0][b, b:b + 1], GT_CLASSES[b:b + 1],
                             GT_BOXES, GT_CLASSES) for b in range(2)]
        assert adv[0].tolist() == pytest.approx(expected, abs=1e-6)
        assert all(e > 0 for e in expected)


# ---- credits for the boxes D kept, and for the suppressors ----
def _reference_d(props, prob, box):
    """D and each removed box's remover by a textbook NMS loop, as (roi, class) pairs."""
    clipped = Boxes(box.view(-1, 4).clone())
    clipped.clip(IMAGE_SIZE)
    clipped = clipped.tensor.view(len(props), NUM_CLASSES, 4)
    det, remover = [], {}
    for c in range(NUM_CLASSES):
        kept, removed_by = _greedy_nms_with_suppressors(clipped[:, c], prob[:, c], 0.5)
        det += [(i, c) for i in kept if prob[i, c] > 0.05]
        remover.update({(j, c): (i, c) for j, i in removed_by.items()})
    return clipped, det, remover


def test_kept_box_and_suppressor_credit_against_pycocotools():
    """A of a RoI = its swap advantage (if a candidate) − Σ A_b over the candidates b > 0 it
    suppresses, and + Σ ±(AP(D) − AP(D without d)) over its boxes d in D (+ where d's class is
    the RoI's label), every AP by pycocotools and D by a textbook NMS loop."""
    images = [_image(4, 30, seed) for seed in (31, 32)]
    g = torch.Generator().manual_seed(31)
    probs = [torch.softmax(torch.randn(len(p), NUM_CLASSES + 1, generator=g) * 3, dim=1)
             for p in images]
    boxes = [(p.proposal_boxes.tensor + torch.randn(len(p), 4, generator=g) * 3).repeat(
        1, NUM_CLASSES) for p in images]
    pg = compute_advantages(probs, boxes, images, [p._pg_targets for p in images],
                            PGSettings(reward_estimator="swap", kept_box_credit=True,
                                       suppressor_credit=True),
                            torch.Generator().manual_seed(0))
    advantages = pg.advantages.split([len(p) for p in images])
    credited = {"kept": 0, "suppressor": 0}
    for props, prob, box, adv in zip(images, probs, boxes, advantages):
        gt = props._pg_targets
        clipped, det, remover = _reference_d(props, prob, box)

        def ap(members):
            rois, classes = (torch.tensor(x) for x in zip(*members))
            return _coco_ap(clipped[rois, classes], prob[rois, classes], classes,
                            gt.gt_boxes.tensor, gt.gt_classes)

        base = ap(det)
        expected = torch.zeros(len(props), dtype=torch.float64)
        labels = props.gt_classes.tolist()
        for b, label in enumerate(labels):
            if label == NUM_CLASSES or (b, label) in det:
                continue
            winner = remover.get((b, label))
            winner = winner if winner in det else None
            gain = ap([d for d in det if d != winner] + [(b, label)]) - base
            expected[b] += gain
            if winner is not None and gain > 0:
                expected[winner[0]] -= gain * (1 if labels[winner[0]] == winner[1] else -1)
                credited["suppressor"] += 1
        for d in det:
            loss = base - ap([x for x in det if x != d]) if len(det) > 1 else base
            expected[d[0]] += loss * (1 if labels[d[0]] == d[1] else -1)
            credited["kept"] += 1
        torch.testing.assert_close(adv.double(), expected, atol=2e-6, rtol=0)
    assert credited["kept"] and credited["suppressor"], credited


def test_image_max_bounds_each_image_by_one():
    images = [_image(4, 30, seed) for seed in (41, 42)]
    g = torch.Generator().manual_seed(41)
    probs = [torch.softmax(torch.randn(len(p), NUM_CLASSES + 1, generator=g) * 3, dim=1)
             for p in images]
    boxes = [p.proposal_boxes.tensor.repeat(1, NUM_CLASSES) for p in images]
    runs = {norm: compute_advantages(
        probs, boxes, images, [p._pg_targets for p in images],
        PGSettings(reward_estimator="swap", kept_box_credit=True, advantage_norm=norm),
        torch.Generator()).advantages.split([30, 30]) for norm in ("none", "image_max")}
    for raw, normed in zip(runs["none"], runs["image_max"]):
        assert raw.abs().max() > 0
        torch.testing.assert_close(normed, raw / raw.abs().max())
        assert normed.abs().max() == pytest.approx(1.0)


# ---- ground-truth RoIs appended by detectron2 ----
def _image_with_gt_roi():
    """Object 0 has a real RoI (p 0.8, box a little off) and the appended GT RoI (p 0.99, exact
    box), which would suppress it; object 1 has a real RoI only."""
    gt = Instances(IMAGE_SIZE, gt_boxes=Boxes(GT_BOXES), gt_classes=GT_CLASSES)
    rois = torch.cat([GT_BOXES[:1] + torch.tensor([[4.0, 3.0, 2.0, -5.0]]), GT_BOXES[:1],
                      GT_BOXES[1:] + torch.tensor([[-3.0, 2.0, 4.0, 3.0]])])
    props = Instances(IMAGE_SIZE, proposal_boxes=Boxes(rois), gt_classes=torch.tensor([0, 0, 1]))
    props.set(FROM_GT_FIELD, torch.tensor([False, True, False]))
    props._pg_targets = gt
    prob = torch.tensor([[0.8, 0.03, 0.03, 0.14], [0.99, 0.0, 0.0, 0.01],
                         [0.02, 0.9, 0.03, 0.05]])
    return props, prob, rois.repeat(1, NUM_CLASSES)


@pytest.mark.parametrize("estimator", ["joint", "swap"])
def test_ground_truth_rois_are_left_out_of_the_reward(estimator):
    """D and r' as at test time (without the GT RoI); the GT RoI has no advantage. With
    INCLUDE_GT_PROPOSALS (pgdet 0.2's behaviour) it takes object 0 in D instead of the real RoI."""
    props, prob, boxes = _image_with_gt_roi()
    rois = props.proposal_boxes.tensor
    real_ap = _coco_ap(rois[[0, 2]], prob[[0, 2], [0, 1]], GT_CLASSES, GT_BOXES, GT_CLASSES)
    with_gt_ap = _coco_ap(rois[[1, 2]], prob[[1, 2], [0, 1]], GT_CLASSES, GT_BOXES, GT_CLASSES)
    assert with_gt_ap > real_ap + 0.1
    for include, expected_ap in ((False, real_ap), (True, with_gt_ap)):
        pg = compute_advantages([prob], [boxes], [props], [props._pg_targets],
                                PGSettings(reward_estimator=estimator,
                                           include_gt_proposals=include),
                                torch.Generator().manual_seed(0))
        assert pg.baseline_reward.item() == pytest.approx(expected_ap, abs=1e-6)
        if not include:
            assert pg.advantages[1] == 0 and not pg.candidate_mask[1]
            assert pg.advantages[0] == 0, "the real RoI is in D: nothing to estimate"
        else:
            assert pg.candidate_mask[0], "suppressed by the GT RoI, the real RoI is a candidate"


def test_roi_heads_mark_exactly_the_appended_ground_truth():
    cfg = get_cfg()
    add_pgdet_config(cfg)
    cfg.MODEL.ROI_HEADS.NAME = "PGROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    heads = PGROIHeads(cfg, {"res4": ShapeSpec(channels=8, stride=16)})
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(40, 2, generator=g) * 150
    proposals = Instances(IMAGE_SIZE, proposal_boxes=Boxes(torch.cat([xy, xy + 30], 1)),
                          objectness_logits=torch.randn(40, generator=g))
    targets = Instances(IMAGE_SIZE, gt_boxes=Boxes(GT_BOXES), gt_classes=GT_CLASSES)
    with EventStorage():
        (sampled,) = heads.label_and_sample_proposals([proposals], [targets])
    is_gt_box = (sampled.proposal_boxes.tensor[:, None] == GT_BOXES[None]).all(-1).any(-1)
    assert sampled.get(FROM_GT_FIELD).tolist() == is_gt_box.tolist()
    assert int(is_gt_box.sum()) == len(GT_BOXES)
    assert not targets.has(FROM_GT_FIELD), "the caller's targets are not modified"
    assert sampled._pg_targets is targets


# ---- the random stream ----
def _pg_cfg(seed):
    cfg = get_cfg()
    add_pgdet_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.PG.ENABLED = True
    cfg.SEED = seed
    return cfg


def test_seed_minus_one_draws_a_seed_per_run():
    """pgdet 0.2 gave every SEED -1 run the stream of seed 0."""
    seeds = {PGFastRCNNOutputLayers(_pg_cfg(-1), ShapeSpec(channels=8)).pg_seed for _ in range(3)}
    assert len(seeds) == 3
    assert PGFastRCNNOutputLayers(_pg_cfg(7), ShapeSpec(channels=8)).pg_seed == 7


def test_trainer_resolves_seed_minus_one_once():
    from pgdet.engine.trainer import with_run_seed

    cfg = _pg_cfg(-1)
    cfg.freeze()
    resolved = with_run_seed(cfg)
    assert resolved.SEED >= 0 and cfg.SEED == -1
    assert with_run_seed(resolved) is resolved


def test_action_stream_differs_by_rank(monkeypatch):
    predictor = PGFastRCNNOutputLayers(_pg_cfg(5), ShapeSpec(channels=8))
    streams = {}
    for rank in (0, 1):
        monkeypatch.setattr(pg_options.comm, "get_rank", lambda rank=rank: rank)
        streams[rank] = [torch.rand(50, generator=predictor._generator("cpu", 7))
                         for _ in range(2)]
    assert torch.equal(*streams[0]) and torch.equal(*streams[1])
    assert not torch.equal(streams[0][0], streams[1][0])


def test_negative_weight_share_is_logged(monkeypatch):
    """pg/negative_weight_frac: the share of RoIs whose weight c·A + γ is below 0."""
    images = [_image(4, 30, 51)]
    advantages = torch.linspace(-1, 1, 30)
    monkeypatch.setattr(pg_output_layers, "compute_advantages", lambda *a, **k: PGAdvantages(
        advantages, torch.zeros(1), torch.zeros(1, 1), torch.ones(30, dtype=torch.bool)))
    predictor = PGFastRCNNOutputLayers(_pg_cfg(0), ShapeSpec(channels=8))
    predictor.pg_reward_scale = 2.0
    with EventStorage() as storage:
        predictor.losses((torch.randn(30, NUM_CLASSES + 1), torch.zeros(30, NUM_CLASSES * 4)),
                         images)
        logged = storage.latest()["pg/negative_weight_frac"][0]
    assert logged == pytest.approx(float((2.0 * advantages + 1.0 < 0).float().mean()))
