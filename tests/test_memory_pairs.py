"""MODEL.PG.PAIRWISE_MEMORY_OPPONENTS: the pairs (iii) of UPDATE pairwise, a box of D and a
detection of the reward memory as its fixed opponent, against independent oracles: each pair's
ΔAP by pycocotools' COCOeval run on the memory's image and the scored image together (the box
moved past its opponent, ties in image order as COCOeval's mergesort keeps them), the opponents
chosen by hand, and the loss and its gradient by hand.

Before this option no pair held a detection of a class absent from its image (pairs (i) and
(ii) are within an image); the first test checks that such a detection now is in a pair.
"""
import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_dataset_reward import NOTHING, OBJECT_A, OBJECT_B, _two_stage_image, coco_dataset_ap
from test_pairwise_update import DEMO, PAIRWISE, _sigmoid, _softplus
from test_pg_inference_sets import IDENTITY
from test_pg_loss import NUM_CLASSES

import pgdet.modeling.pg.dense_policy_gradient as dense
from pgdet.engine import ConfigError, Trainer, build_cfg
from pgdet.modeling.pg.pairwise_update import (
    BaseMatching, OrderPairs, dense_pairwise_order_loss, memory_pairs, pairwise_order_loss,
)
from pgdet.modeling.pg.pg_options import PGOptions
from pgdet.modeling.pg.policy_gradient import PGSettings, compute_advantages
from pgdet.modeling.pg.reward_memory import RewardMemory

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEMORY_PAIRS = dict(reward_estimator="swap", update="pairwise", reward_scope="dataset",
                    pairwise_memory_opponents=2)


def _logit(p):
    return math.log(p) - math.log1p(-p)


def _scored_image_pairs(opponents):
    """The memory holds image A: its class-1 object found at 0.6 and, on its background, a
    class-0 box at 0.95 (A has no class-0 object). The scored image B holds a class-0 object
    found at 0.8 (slot 0) and, on its background, a class-1 box at 0.9 (slot 1): a class
    absent from B. Returns B's order pairs."""
    settings = PGSettings(**{**MEMORY_PAIRS, "pairwise_memory_opponents": opponents})
    memory = RewardMemory(10)
    for probs, boxes, props, gt in (
        _two_stage_image(torch.cat([OBJECT_A, NOTHING]), [1, NUM_CLASSES],
                         [[0.01, 0.6, 0.01, 0.38], [0.95, 0.01, 0.01, 0.03]], OBJECT_A, [1]),
        _two_stage_image(torch.cat([OBJECT_B, NOTHING]), [0, NUM_CLASSES],
                         [[0.8, 0.01, 0.01, 0.18], [0.03, 0.9, 0.03, 0.04]], OBJECT_B, [0]),
    ):
        pg = compute_advantages([probs], [boxes], [props], [gt], settings, torch.Generator(),
                                reward_memory=memory)
    return pg.order_pairs


def test_absent_class_box_is_paired_with_the_memorys_true_positive_as_cocoeval_says():
    """B's absent-class box (slot 1, 0.9) ranks above A's class-1 true positive (0.6): the pair
    moves it to 0.6, just below A's (COCOeval: image A first among equal scores). B's class-0
    true positive (slot 0, 0.8) ranks below A's class-0 false positive (0.95): the pair moves it
    just above. Each ΔAP is COCOeval's on A and B together; without memory opponents B has no
    pair at all (its two boxes are of different classes), so the absent-class box is in none."""
    pairs = _scored_image_pairs(opponents=2)
    f32 = lambda x: float(torch.tensor(x))  # noqa: E731 (the scores are float32 in the model)
    a_at_d = (OBJECT_A.numpy(), [1], torch.cat([OBJECT_A, NOTHING]).numpy(),
              [f32(0.6), f32(0.95)], [1, 0])
    b_boxes = torch.cat([OBJECT_B, NOTHING]).numpy()

    def b_with(scores):
        return coco_dataset_ap([a_at_d, (OBJECT_B.numpy(), [0], b_boxes, scores, [0, 1])])

    at_d = b_with([f32(0.8), f32(0.9)])
    just_above = float(torch.nextafter(torch.tensor(0.95), torch.tensor(1.0)))
    expected = {  # (above slot, below slot, class): ΔAP, opponent gap
        (1, -1, 1): (b_with([f32(0.8), f32(0.6)]) - at_d, _logit(f32(0.6)) - _logit(f32(0.9))),
        (-1, 0, 0): (b_with([just_above, f32(0.9)]) - at_d,
                     _logit(f32(0.95)) - _logit(f32(0.8))),
    }
    got = {(a, b, c): (d, g) for a, b, c, d, g in zip(
        pairs.above_slot.tolist(), pairs.below_slot.tolist(), pairs.above_class.tolist(),
        pairs.delta_ap.tolist(), pairs.opponent_gap.tolist())}
    assert got.keys() == expected.keys()
    for key, (delta, gap) in expected.items():
        assert delta > 0 and got[key][0] == pytest.approx(delta, abs=1e-6), key
        assert got[key][1] == pytest.approx(gap, rel=1e-5), key
    assert pairs.above_class.tolist() == pairs.below_class.tolist()
    assert dict(zip(pairs.above_slot.tolist(), pairs.absent_class.tolist())) == {1: True, -1: False}
    assert len(_scored_image_pairs(opponents=0).delta_ap) == 0


def test_opponents_spread_from_the_nearest_to_the_farthest():
    """D: a false positive of class 0 at 0.9 and a true positive of class 1 at 0.3. Memory
    (class-major, scores descending): class 0 true positives 0.95, 0.9, 0.8, 0.7, 0.5, 0.2 and a
    false positive 0.6; class 1 false positives 0.9, 0.6, 0.3 and a true positive 0.4. The false
    positive's opponents are the class-0 true positives strictly below it (a memory detection of
    equal score already ranks above it): 0.8, 0.7, 0.5, 0.2, of which 3 spread evenly are 0.8,
    0.5, 0.2 (positions 0, 1.5 → 2, 3). The true positive's are the class-1 false positives at
    or above it, nearest first: 0.3, 0.6, 0.9, each moved to the next float above."""
    matching = BaseMatching(torch.tensor([[0.9, 0.3]]), torch.tensor([[0, 1]]),
                            torch.tensor([[False, True]]), torch.tensor([[True, True]]))
    classes = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    scores = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.2, 0.9, 0.6, 0.4, 0.3])
    tp = torch.tensor([1, 1, 1, 1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    (pairs,) = memory_pairs(matching, classes, scores, tp, per_box=3, max_pairs=256)
    assert pairs.box.tolist() == [0, 0, 0, 1, 1, 1]
    assert pairs.demoted.tolist() == [True] * 3 + [False] * 3
    opponents = [0.8, 0.5, 0.2, 0.3, 0.6, 0.9]
    assert pairs.opponent_score.tolist() == pytest.approx(opponents)
    up = [float(torch.nextafter(torch.tensor(s), torch.tensor(2.0))) for s in opponents[3:]]
    assert pairs.moved_score.tolist() == [float(torch.tensor(s)) for s in opponents[:3]] + up
    (capped,) = memory_pairs(matching, classes, scores, tp, per_box=3, max_pairs=4)
    assert capped.box.tolist() == [0, 0, 0, 1], "the highest-ranked boxes' pairs first"
    (one,) = memory_pairs(matching, classes, scores, tp, per_box=1, max_pairs=256)
    assert one.opponent_score.tolist() == pytest.approx([0.8, 0.3]), "the nearest"


def test_fixed_opponent_loss_and_gradient_by_hand():
    """Pair (iii): RoI 0's class-0 log-odds z = x_0 − log Σ_{j≠0} e^{x_j} above a memory
    opponent at gap g: the opponent's log-odds is z + g held fixed, so the margin is sign(ΔAP)·g,
    ℓ = |ΔAP| softplus(−sign·g), and only z moves: dℓ/dz = sign·|ΔAP|·σ(−sign·g). With the
    opponent above (slot -1 above) the roles swap: dℓ/dz = −sign·|ΔAP|·σ(−sign·(−g))."""
    row = [2.0, 0.5, -1.0]
    others = math.exp(0.5) + math.exp(-1.0)
    for delta, gap, box_above in ((0.3, -1.2, True), (-0.2, 0.7, True), (0.25, 0.4, False)):
        logits = torch.tensor([row], dtype=torch.float64, requires_grad=True)
        box, fixed = torch.tensor([0]), torch.tensor([-1])
        pairs = OrderPairs(box if box_above else fixed, torch.tensor([0]),
                           fixed if box_above else box, torch.tensor([0]),
                           torch.tensor([delta], dtype=torch.float64), torch.tensor([False]),
                           torch.tensor([gap], dtype=torch.float64), torch.tensor([False]))
        loss = pairwise_order_loss(logits, pairs)
        (grad,) = torch.autograd.grad(loss, logits)
        sign = 1 if delta > 0 else -1
        margin = sign * (gap if box_above else -gap)  # sign · (z_below − z_above)
        assert loss.item() == pytest.approx(abs(delta) * _softplus(-margin), rel=1e-12)
        d_z = (sign if box_above else -sign) * abs(delta) * _sigmoid(-margin)
        expected = [[d_z, -d_z * math.exp(0.5) / others, -d_z * math.exp(-1.0) / others]]
        torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
        # a one-stage slot's log-odds is its logit: slot 0 of [N=1, R=1, K=2]
        dense_logits = torch.tensor([[[0.3, 1.1]]], dtype=torch.float64, requires_grad=True)
        dense_loss = dense_pairwise_order_loss(torch.nn.functional.logsigmoid(dense_logits),
                                               pairs)
        (dense_grad,) = torch.autograd.grad(dense_loss, dense_logits)
        assert dense_loss.item() == pytest.approx(abs(delta) * _softplus(-margin), rel=1e-9)
        assert dense_grad.flatten().tolist() == pytest.approx([d_z, 0.0], rel=1e-9)


def test_dense_detector_pairs_a_box_with_the_memory(monkeypatch):
    """RetinaNet's path: one-class images whose boxes are their anchors. Image 1 (into the
    memory): a true positive at 0.5. Image 2: a false positive at 0.9 far from its object and a
    true positive at 0.3 on it: besides its own pair (ii), the false positive is paired with
    image 1's true positive (slot -1 below), with ΔAP > 0, and the loss pushes it down."""
    gt_box, far = [10.0, 10.0, 50.0, 50.0], [200.0, 200.0, 240.0, 240.0]
    gt = Instances((300, 300), gt_boxes=Boxes(torch.tensor([gt_box])),
                   gt_classes=torch.zeros(1, dtype=torch.long))
    memory = RewardMemory(10)
    options = PGOptions(enabled=True, settings=PGSettings(**MEMORY_PAIRS))
    seen = []
    real = dense.advantages_of_images
    monkeypatch.setattr(dense, "advantages_of_images",
                        lambda images, *a: seen.append(real(images, *a)) or seen[-1])
    for anchors, probs, labels in (([gt_box], [0.5], [0]), ([far, gt_box], [0.9, 0.3], [1, 0])):
        scores = torch.tensor(probs)[None, :, None]
        logits = torch.logit(scores).double().requires_grad_()
        with EventStorage() as storage:
            loss = dense.dense_pg_loss(
                torch.nn.functional.logsigmoid(logits), [scores],
                [torch.zeros(1, len(anchors), 4)], [Boxes(torch.tensor(anchors))],
                [torch.tensor(labels)], [gt], [(300, 300)], IDENTITY,
                dense.DenseInference(0.05, 1000, 0.5, 100), options, normalizer=1.0,
                reward_memory=memory)
            logged = storage.latest()
    pairs = seen[-1].order_pairs
    memory_side = pairs.below_slot == -1
    assert pairs.above_slot[memory_side].tolist() == [0] and pairs.delta_ap[memory_side] > 0
    assert logged["pg/memory_pairs"][0] == 1
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and grad[0, 0, 0] > 0, "descent lowers the false positive"


@pytest.mark.parametrize("opts", [
    [*PAIRWISE, "MODEL.PG.PAIRWISE_MEMORY_OPPONENTS", "2"],  # image scope
    ["MODEL.PG.REWARD_SCOPE", "dataset", "MODEL.PG.PAIRWISE_MEMORY_OPPONENTS", "2"],
    [*PAIRWISE, "MODEL.PG.REWARD_SCOPE", "dataset", "MODEL.PG.PAIRWISE_MEMORY_OPPONENTS", "-1"],
])
def test_memory_opponents_need_pairwise_and_the_dataset_reward(opts):
    cfg = build_cfg(DEMO, ["MODEL.PG.ENABLED", "True", *opts])
    with pytest.raises(ConfigError) as e:
        Trainer.build_model(cfg)
    assert "MODEL.PG.PAIRWISE_MEMORY_OPPONENTS" in str(e.value) and "\n" not in str(e.value)
