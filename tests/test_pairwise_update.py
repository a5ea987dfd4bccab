"""MODEL.PG.UPDATE pairwise against independent oracles: each pair's ΔAP by pycocotools' COCOeval
on D (a textbook NMS loop) and on D with the pair exchanged, for the two-stage and the dense
detectors; the loss and its gradient by hand; bad options rejected in one line; a few training
iterations on the demo config."""
import json
import math
import os

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_pg_estimators import _reference_d
from test_pg_inference_sets import IDENTITY
from test_pg_loss import NUM_CLASSES, _coco_ap, _image, _predictor, one_image_cocoeval

import pgdet.modeling.pg.dense_policy_gradient as dense
import pgdet.modeling.pg.pg_output_layers as pg_output_layers
from pgdet.engine import ConfigError, Trainer, build_cfg
from pgdet.modeling.pg.pairwise_update import (
    OrderPairs, dense_pairwise_order_loss, pairwise_order_loss,
)
from pgdet.modeling.pg.pg_options import PGOptions
from pgdet.modeling.pg.policy_gradient import PGAdvantages, PGSettings, compute_advantages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml")
PAIRWISE = ["MODEL.PG.UPDATE", "pairwise", "MODEL.PG.REWARD_ESTIMATOR", "swap"]


def _coco_true_positives(boxes, scores, classes, gt_boxes, gt_classes):
    """[n] bool: COCOeval's match of each detection at IoU 0.5 (its dtMatches, area "all")."""
    ev = one_image_cocoeval(boxes, scores, classes, gt_boxes, gt_classes)
    matched = set()  # loadRes numbers the detections 1..n in the given order
    for e in ev.evalImgs:
        if e is not None and e["aRng"] == [0, 1e10]:
            matched.update(d for d, m in zip(e["dtIds"], e["dtMatches"][0]) if m > 0)
    return [i + 1 in matched for i in range(len(boxes))]


def _case(seeds):
    """Images of 5 objects and 40 sampled RoIs, random class scores, boxes jittered by 6 px."""
    images = [_image(5, 40, seed) for seed in seeds]
    g = torch.Generator().manual_seed(seeds[0])
    probs = [torch.softmax(torch.randn(len(p), NUM_CLASSES + 1, generator=g) * 3, dim=1)
             for p in images]
    boxes = [(p.proposal_boxes.tensor + torch.randn(len(p), 4, generator=g) * 6).repeat(
        1, NUM_CLASSES) for p in images]
    return images, probs, boxes


def test_each_pairs_delta_ap_against_pycocotools():
    """Pairs (i): every candidate removed by a box of D in greedy NMS, ΔAP = AP(D − s + b) −
    AP(D); pairs (ii): every false positive of D above a true positive of its class (COCOeval's
    matches at 0.5), ΔAP = AP(D with their scores exchanged) − AP(D). Nothing else."""
    images, probs, boxes = _case((51, 52, 53))
    pg = compute_advantages(probs, boxes, images, [p._pg_targets for p in images],
                            PGSettings(reward_estimator="swap", update="pairwise"),
                            torch.Generator().manual_seed(0))
    pairs = pg.order_pairs
    got = {key: (delta, kind) for key, delta, kind in zip(
        zip(pairs.above_slot.tolist(), pairs.above_class.tolist(), pairs.below_slot.tolist(),
            pairs.below_class.tolist()), pairs.delta_ap.tolist(), pairs.suppression.tolist())}
    assert len(got) == len(pairs.delta_ap)

    expected, offset = {}, 0
    for props, prob, box in zip(images, probs, boxes):
        gt = props._pg_targets
        clipped, det, remover = _reference_d(props, prob, box)

        def ap(members, scores=None):
            rois, classes = (torch.tensor(x) for x in zip(*members))
            score = prob[rois, classes] if scores is None else torch.tensor(scores)
            return _coco_ap(clipped[rois, classes], score, classes, gt.gt_boxes.tensor,
                            gt.gt_classes)

        base = ap(det)
        for b, label in enumerate(props.gt_classes.tolist()):
            winner = remover.get((b, label))
            if label == NUM_CLASSES or (b, label) in det or winner not in det:
                continue
            gain = ap([d for d in det if d != winner] + [(b, label)]) - base
            expected[(winner[0] + offset, winner[1], b + offset, label)] = (gain, True)
        rois, classes = (torch.tensor(x) for x in zip(*det))
        scores = prob[rois, classes].tolist()
        tp = _coco_true_positives(clipped[rois, classes], prob[rois, classes], classes,
                                  gt.gt_boxes.tensor, gt.gt_classes)
        for u, (roi_u, c_u) in enumerate(det):
            for v, (roi_v, c_v) in enumerate(det):
                if c_u == c_v and not tp[u] and tp[v] and scores[u] > scores[v]:
                    exchanged = list(scores)
                    exchanged[u], exchanged[v] = scores[v], scores[u]
                    expected[(roi_u + offset, c_u, roi_v + offset, c_v)] = (
                        ap(det, exchanged) - base, False)
        offset += len(props)

    assert got.keys() == expected.keys()
    for key, (delta, kind) in expected.items():
        assert got[key][1] == kind, key
        assert got[key][0] == pytest.approx(delta, abs=2e-6), key
    kinds = [kind for delta, kind in expected.values() if delta != 0]
    assert any(kinds) and not all(kinds), "both kinds of pair, with a nonzero ΔAP"


def test_exchange_pairs_are_capped_per_image_highest_false_positive_first():
    """PAIRWISE_MAX_PAIRS 2 keeps the two pairs of the highest-scored false positive (ties: its
    highest-scored true positives), 0 none."""
    images, probs, boxes = _case((51,))

    def exchanged(max_pairs):
        pairs = compute_advantages(probs, boxes, images, [images[0]._pg_targets],
                                   PGSettings(reward_estimator="swap", update="pairwise",
                                              pairwise_max_pairs=max_pairs),
                                   torch.Generator().manual_seed(0)).order_pairs
        keep = ~pairs.suppression
        return [((a, ca), (b, cb)) for a, ca, b, cb in zip(
            pairs.above_slot[keep].tolist(), pairs.above_class[keep].tolist(),
            pairs.below_slot[keep].tolist(), pairs.below_class[keep].tolist())]

    every = exchanged(256)
    assert len(every) > 2
    score = {box: probs[0][box].item() for pair in every for box in pair}
    ranked = sorted(every, key=lambda pair: (-score[pair[0]], -score[pair[1]]))
    assert exchanged(2) == ranked[:2]
    assert exchanged(0) == []


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_loss_and_gradient_by_hand():
    """Two RoIs with logits [2, 0.5, -1] and [1.5, 2.5, 0]: pair (RoI 0 class 0 above, RoI 1
    class 1 below). z = x_c − log Σ_{j≠c} e^{x_j}; ℓ = |ΔAP| softplus(−sign(ΔAP)(z_b − z_a));
    dℓ/dx_j = dℓ/dz · dz/dx_j with dz/dx_c = 1 and dz/dx_j = −e^{x_j} / Σ_{k≠c} e^{x_k}."""
    rows = [[2.0, 0.5, -1.0], [1.5, 2.5, 0.0]]
    z_a = rows[0][0] - math.log(math.exp(0.5) + math.exp(-1.0))
    z_b = rows[1][1] - math.log(math.exp(1.5) + math.exp(0.0))
    for delta in (0.3, -0.2):
        logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
        pairs = OrderPairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]),
                           torch.tensor([1]), torch.tensor([delta], dtype=torch.float64),
                           torch.tensor([True]), torch.zeros(1, dtype=torch.float64),
                           torch.tensor([False]))
        loss = pairwise_order_loss(logits, pairs)
        (grad,) = torch.autograd.grad(loss, logits)
        sign = 1 if delta > 0 else -1
        margin = sign * (z_b - z_a)
        assert loss.item() == pytest.approx(abs(delta) * _softplus(-margin), rel=1e-12)
        d_margin = -abs(delta) * _sigmoid(-margin)  # dℓ/dm
        d_za, d_zb = -sign * d_margin, sign * d_margin
        others_a = math.exp(0.5) + math.exp(-1.0)
        others_b = math.exp(1.5) + math.exp(0.0)
        expected = [[d_za, -d_za * math.exp(0.5) / others_a, -d_za * math.exp(-1.0) / others_a],
                    [-d_zb * math.exp(1.5) / others_b, d_zb, -d_zb * math.exp(0.0) / others_b]]
        torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


def test_background_margin_moves_class_against_background_alone():
    """PAIRWISE_MARGIN background: z = x_c − x_K (background last). Two RoIs of three classes
    and background, pair (RoI 0 class 0 above, RoI 1 class 1 below), then RoI 0 against a fixed
    memory opponent at gap g: dℓ/dz reaches x_c with +1 and x_K with −1 and no other logit,
    where the softmax log-odds ("log_odds") also lifts RoI 0's other wrong classes."""
    rows = [[2.0, 0.5, -1.0, 0.3], [1.5, 2.5, 0.0, -0.4]]
    z_a, z_b = rows[0][0] - rows[0][3], rows[1][1] - rows[1][3]
    batch = OrderPairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]),
                       torch.tensor([1]), torch.tensor([0.3], dtype=torch.float64),
                       torch.tensor([True]), torch.zeros(1, dtype=torch.float64),
                       torch.tensor([False]))
    memory = OrderPairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([-1]),
                        torch.tensor([0]), torch.tensor([0.3], dtype=torch.float64),
                        torch.tensor([False]), torch.tensor([-0.8], dtype=torch.float64),
                        torch.tensor([True]))
    for pairs, margin in ((batch, z_b - z_a), (memory, -0.8)):  # sign(ΔAP) = +1
        logits = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
        loss = pairwise_order_loss(logits, pairs, "background")
        (grad,) = torch.autograd.grad(loss, logits)
        assert loss.item() == pytest.approx(0.3 * _softplus(-margin), rel=1e-12)
        d_z = 0.3 * _sigmoid(-margin)  # dℓ/dz_above = −dℓ/dm
        expected = [[d_z, 0.0, 0.0, -d_z], [0.0, 0.0, 0.0, 0.0]]
        if pairs is batch:
            expected[1] = [0.0, -d_z, 0.0, d_z]
        torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
        (softmax_grad,) = torch.autograd.grad(pairwise_order_loss(logits, pairs), logits)
        assert softmax_grad[0, 1] < 0 and softmax_grad[0, 2] < 0, "log_odds lifts the others"


def test_pairwise_gradient_does_not_saturate_where_the_cross_entropy_does():
    """Both boxes at p = 0.9 of their class: the CE's true-class gradient p − 1 = −0.1, the
    pair's on each log-odds |ΔAP|·σ(0) = |ΔAP|/2 (equal log-odds: margin 0)."""
    logits = torch.tensor([[math.log(9.0), 0.0], [math.log(9.0), 0.0]], requires_grad=True)
    pairs = OrderPairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]),
                       torch.tensor([0]), torch.tensor([0.4]), torch.tensor([True]),
                       torch.zeros(1), torch.tensor([False]))
    (grad,) = torch.autograd.grad(pairwise_order_loss(logits, pairs), logits)
    assert grad[:, 0].tolist() == pytest.approx([0.2, -0.2])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0]), reduction="sum")
    assert torch.autograd.grad(ce, logits)[0][:, 0].tolist() == pytest.approx([-0.1, -0.1])


@pytest.mark.parametrize("gamma,scale,margin", [(1.0, 1.0, "log_odds"), (0.5, 2.0, "log_odds"),
                                                (1.0, 1.0, "background")])
def test_box_predictor_loss_is_gamma_ce_plus_scaled_pairs_over_rois(monkeypatch, gamma, scale,
                                                                    margin):
    """With fixed pairs and advantages: L = (γ Σ_b CE_b + c Σ ℓ) / R, the advantages unused.
    The CE's gradient by its closed form γ(p − onehot)/R, the pair's by autograd of ℓ alone
    (on the margin of MODEL.PG.PAIRWISE_MARGIN, whose ℓ the tests above check by hand)."""
    proposals = [_image(4, 30, 1), _image(2, 20, 2)]
    num_rois = sum(len(p) for p in proposals)
    gt_classes = torch.cat([p.gt_classes for p in proposals])
    pairs = OrderPairs(torch.tensor([3, 35]), torch.tensor([1, 0]), torch.tensor([7, 12]),
                       torch.tensor([1, 2]), torch.tensor([0.25, -0.1]),
                       torch.tensor([True, False]), torch.zeros(2),
                       torch.tensor([False, False]))
    monkeypatch.setattr(
        pg_output_layers, "compute_advantages",
        lambda *a, **k: PGAdvantages(torch.full((num_rois,), 0.7), torch.zeros(1),
                                     torch.zeros(1, 1), torch.ones(num_rois, dtype=torch.bool),
                                     order_pairs=pairs))
    predictor = _predictor(pg_enabled=True, pg_gamma=gamma, pg_reward_scale=scale,
                           pg_settings=PGSettings(reward_estimator="swap", update="pairwise",
                                                  pairwise_margin=margin))
    logits = torch.randn(num_rois, NUM_CLASSES + 1, requires_grad=True)
    deltas = torch.randn(num_rois, NUM_CLASSES * 4) * 0.1
    with EventStorage() as storage:
        loss = predictor.losses((logits, deltas), proposals)["loss_cls"]
        assert storage.latest()["pg/order_pairs"][0] == 2
        assert storage.latest()["pg/order_pair_abs_delta_ap"][0] == pytest.approx(0.175)
    (grad,) = torch.autograd.grad(loss, logits)
    p = torch.softmax(logits.detach(), dim=1)
    ce_grad = gamma * (p - torch.nn.functional.one_hot(gt_classes, NUM_CLASSES + 1)) / num_rois
    (pair_grad,) = torch.autograd.grad(pairwise_order_loss(logits, pairs, margin), logits)
    torch.testing.assert_close(grad, ce_grad + scale * pair_grad / num_rois, rtol=1e-5,
                               atol=1e-8)


@pytest.mark.parametrize("opts,key", [
    (["MODEL.PG.UPDATE", "ranknet"], "MODEL.PG.UPDATE must be one of"),
    (["MODEL.PG.UPDATE", "pairwise"], "REWARD_ESTIMATOR swap"),
    ([*PAIRWISE, "MODEL.PG.ADVANTAGE_NORM", "image_max"], "MODEL.PG.ADVANTAGE_NORM"),
    ([*PAIRWISE, "MODEL.PG.PAIRWISE_MAX_PAIRS", "-1"], "MODEL.PG.PAIRWISE_MAX_PAIRS"),
    ([*PAIRWISE, "MODEL.PG.PAIRWISE_MARGIN", "hinge"], "MODEL.PG.PAIRWISE_MARGIN must be one of"),
    (["MODEL.PG.PAIRWISE_MARGIN", "background"], "MODEL.PG.PAIRWISE_MARGIN background"),
])
def test_bad_update_options_fail_in_one_line(opts, key):
    cfg = build_cfg(DEMO, ["MODEL.PG.ENABLED", "True", *opts])
    with pytest.raises(ConfigError) as e:
        Trainer.build_model(cfg)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_dense_pair_loss_and_gradient_by_hand():
    """One-stage slots are (anchor, class) sigmoids, whose log-odds are the logits: pair
    (slot 1 above, slot 4 below) of logits 2.5 and 0.5, ℓ = |ΔAP| softplus(−sign(ΔAP)(x_b −
    x_a)); dℓ/dx_a = sign·|ΔAP|·σ(−m), dℓ/dx_b = −sign·|ΔAP|·σ(−m), 0 elsewhere. A logit at
    which float32 rounds p to 1 keeps a finite loss."""
    x = [[[0.0, 2.5, -1.0], [3.0, 0.5, -2.0]]]  # [N=1, R=2, K=3]: slot 1 = (0, 1), 4 = (1, 1)
    for delta in (0.3, -0.2):
        logits = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        pairs = OrderPairs(torch.tensor([1]), torch.tensor([1]), torch.tensor([4]),
                           torch.tensor([1]), torch.tensor([delta], dtype=torch.float64),
                           torch.tensor([True]), torch.zeros(1, dtype=torch.float64),
                           torch.tensor([False]))
        loss = dense_pairwise_order_loss(torch.nn.functional.logsigmoid(logits), pairs)
        (grad,) = torch.autograd.grad(loss, logits)
        sign = 1 if delta > 0 else -1
        margin = sign * (0.5 - 2.5)
        assert loss.item() == pytest.approx(abs(delta) * _softplus(-margin), rel=1e-9)
        push = abs(delta) * _sigmoid(-margin)
        expected = torch.zeros_like(logits)
        expected[0, 0, 1], expected[0, 1, 1] = sign * push, -sign * push
        torch.testing.assert_close(grad, expected)
    saturated = torch.tensor([[[120.0, 0.0]]], requires_grad=True)
    pairs = OrderPairs(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([1]),
                       torch.tensor([0.5]), torch.tensor([False]), torch.zeros(1),
                       torch.tensor([False]))
    loss = dense_pairwise_order_loss(torch.nn.functional.logsigmoid(saturated), pairs)
    assert torch.isfinite(loss) and torch.isfinite(torch.autograd.grad(loss, saturated)[0]).all()


def test_dense_pairs_are_the_hand_derived_ones_with_pycocotools_delta_ap(monkeypatch):
    """A one-class dense detector whose boxes are its anchors: s [14,14,54,54] at 0.9 covers
    GT g1 [10,10,50,50] at IoU 0.68 and suppresses the positive anchor b on g1 itself (0.8);
    a false positive f far from any GT at 0.95; t [102,102,142,142] at 0.7 on GT g2. D = {f, s,
    t}, and the pairs are exactly (s above b, a suppression) and (f above s), (f above t), each
    with pycocotools' AP change of its exchange; slots are the anchors (K = 1). The logged
    weights are γ, as in the two-stage path: the advantages weigh nothing."""
    s_box, b_box = [14.0, 14.0, 54.0, 54.0], [10.0, 10.0, 50.0, 50.0]
    f_box, t_box = [200.0, 200.0, 240.0, 240.0], [102.0, 102.0, 142.0, 142.0]
    anchors = [s_box, b_box, f_box, t_box]
    scores = torch.tensor([0.9, 0.8, 0.95, 0.7])[None, :, None]  # [N=1, A=4, K=1]
    gt = Instances((300, 300), gt_boxes=Boxes(torch.tensor([b_box, [100.0, 100.0, 140.0, 140.0]])),
                   gt_classes=torch.zeros(2, dtype=torch.long))
    seen = []
    real = dense.advantages_of_images
    monkeypatch.setattr(dense, "advantages_of_images",
                        lambda images, *a: seen.append(real(images, *a)) or seen[-1])
    with EventStorage() as storage:
        dense.dense_pg_loss(
            scores.log(), [scores], [torch.zeros(1, 4, 4)], [Boxes(torch.tensor(anchors))],
            [torch.tensor([0, 0, 1, 0])], [gt], [(300, 300)], IDENTITY,
            dense.DenseInference(0.05, 1000, 0.5, 100),
            PGOptions(enabled=True, settings=PGSettings(reward_estimator="swap",
                                                        update="pairwise")), normalizer=1.0)
        logged = storage.latest()
    assert logged["pg/order_pairs"][0] == 3
    assert logged["pg/mean_weight"][0] == 1.0, "the advantages weigh nothing: every weight is γ"
    pairs = seen[0].order_pairs
    got = {(a, b, bool(k)): d for a, b, k, d in zip(
        pairs.above_slot.tolist(), pairs.below_slot.tolist(), pairs.suppression.tolist(),
        pairs.delta_ap.tolist())}

    def ap(boxes, set_scores):
        return _coco_ap(torch.tensor(boxes), torch.tensor(set_scores),
                        torch.zeros(len(boxes), dtype=torch.long), gt.gt_boxes.tensor,
                        gt.gt_classes, num_classes=1)

    base = ap([f_box, s_box, t_box], [0.95, 0.9, 0.7])
    expected = {
        (0, 1, True): ap([f_box, b_box, t_box], [0.95, 0.8, 0.7]) - base,
        (2, 0, False): ap([f_box, s_box, t_box], [0.9, 0.95, 0.7]) - base,
        (2, 3, False): ap([f_box, s_box, t_box], [0.7, 0.9, 0.95]) - base,
    }
    assert got.keys() == expected.keys()
    for key, delta in expected.items():
        assert delta != 0 and got[key] == pytest.approx(delta, abs=2e-6), key


@pytest.mark.parametrize("extra,scalar", [
    ([], "pg/order_pairs"),
    (["MODEL.PG.REWARD_SCOPE", "dataset", "MODEL.PG.PAIRWISE_MEMORY_OPPONENTS", "2"],
     "pg/memory_pairs"),
])
def test_demo_training_with_pairwise_logs_the_pairs(tmp_path, extra, scalar):
    """Three iterations of the demo Faster R-CNN from random weights: finite losses and the
    pair scalars in metrics.json (with memory opponents: from the dataset reward's memory)."""
    cfg = build_cfg(DEMO, [
        "MODEL.PG.ENABLED", "True", *PAIRWISE, *extra, "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    Trainer(cfg).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 2
    assert all(math.isfinite(r["total_loss"]) for r in records if "total_loss" in r)
    assert all(scalar in r for r in records if "total_loss" in r)
