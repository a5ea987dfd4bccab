"""The policy gradient for RetinaNet against independent oracles.

- detectron2's own RetinaNet, same weights and inputs (PG off; γ = 1 with c = 0);
- detectron2's RetinaNet in eval mode for the baseline detections D;
- every action enumerated and scored by pycocotools for the PG term's gradient
  (the oracle of tests/test_pg_estimators.py, on the same case);
- detectron2's own model-zoo RetinaNet for the model-zoo config's checkpoint.
"""
import json
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from test_model_zoo import model_zoo_checkpoint
from test_pg_estimators import (
    GT_CLASSES, MATCH, P_B, _action_rewards, _enumerable_case, _expected_reward,
)
from test_pg_loss import IMAGE_SIZE, NUM_CLASSES

import pgdet.modeling.pg.dense_policy_gradient as dense
from pgdet.engine import ConfigError, build_cfg
from pgdet.engine.checkpoint import PGCheckpointer
from pgdet.modeling.pg.pg_options import PGOptions
from pgdet.modeling.pg.policy_gradient import PGSettings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "pgdet", "configs", "demo", "pg_retinanet_MobileNetV2_FPN_demo.yaml")


def _cfg(*opts):
    """The demo RetinaNet, random timm weights (nothing loaded), small images."""
    return build_cfg(DEMO, ["MODEL.WEIGHTS", "", "MODEL.TIMM.WEIGHTS", "", *opts])


def _batch():
    """Two images of different sizes (so the batch is padded), one with three objects, one
    without ground truth."""
    g = torch.Generator().manual_seed(0)
    objects = Instances((96, 128), gt_boxes=Boxes(torch.tensor(
        [[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 70.0], [30.0, 50.0, 70.0, 90.0]])),
        gt_classes=torch.tensor([0, 2, 3]))
    empty = Instances((80, 96), gt_boxes=Boxes(torch.zeros(0, 4)),
                      gt_classes=torch.zeros(0, dtype=torch.long))
    return [{"image": torch.rand(3, *inst.image_size, generator=g) * 255, "instances": inst,
             "height": inst.image_size[0], "width": inst.image_size[1]}
            for inst in (objects, empty)]


def _spread_scores(model, seed=1):
    """Class biases around 0 instead of the prior's −4.6: random weights then score many
    boxes above the test threshold, so D is not empty and NMS, top-k and the cap all act. The
    head's GroupNorm already makes the scores and boxes differ from anchor to anchor (distinct
    scores, no ties for NMS to break)."""
    assert isinstance(model.head.cls_subnet[1], torch.nn.GroupNorm)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        model.head.cls_score.bias.copy_(torch.randn(model.head.cls_score.bias.shape, generator=g))


def _models(*opts):
    """(detectron2's RetinaNet, PGRetinaNet) with the same weights."""
    torch.manual_seed(0)
    ours = build_model(_cfg(*opts))
    _spread_scores(ours)
    reference = build_model(_cfg(*opts, "MODEL.META_ARCHITECTURE", "RetinaNet"))
    assert type(reference).__name__ == "RetinaNet"
    reference.load_state_dict(ours.state_dict())
    return reference, ours


@pytest.mark.parametrize("opts", [["MODEL.PG.ENABLED", "False"],
                                  ["MODEL.PG.GAMMA", "1.0", "MODEL.PG.REWARD_SCALE", "0.0"]])
def test_pg_off_is_detectron2_retinanet_loss(opts):
    """Losses and every parameter's gradient, over two iterations (the focal loss's normaliser
    is a moving average, so the second one checks that it moves alike)."""
    reference, ours = _models(*opts)
    reference.train()
    ours.train()
    for _ in range(2):
        with EventStorage():
            ref, got = reference(_batch()), ours(_batch())
        assert ref.keys() == got.keys() == {"loss_cls", "loss_box_reg"}
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7)
        grads = [torch.autograd.grad(sum(loss.values()),
                                     [p for p in m.parameters() if p.requires_grad],
                                     allow_unused=True)
                 for loss, m in ((ref, reference), (got, ours))]
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                # CPU convolution kernels differ by ~1e-7 between two modules' backward passes
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def pg_images_of_a_training_step(monkeypatch, model, batch):
    """The per-image reward inputs (PGImage list) that a dense detector's PG term hands to the
    estimators in one training forward of `model` on `batch`."""
    seen = []
    real = dense.advantages_of_images
    monkeypatch.setattr(dense, "advantages_of_images",
                        lambda images, *a: seen.append(images) or real(images, *a))
    model.train()
    with EventStorage():
        model(batch)
    (images,) = seen
    return images


def test_baseline_detections_are_retinanets_eval_inference(monkeypatch):
    """D of each training image equals detectron2's RetinaNet in eval mode on the same image and
    weights (with per-level top-k and the detection cap both binding), and each box's slot is
    the (anchor, class) whose score and decoded box it is."""
    reference, ours = _models("MODEL.RETINANET.TOPK_CANDIDATES_TEST", "40",
                              "TEST.DETECTIONS_PER_IMAGE", "25")
    images_seen = pg_images_of_a_training_step(monkeypatch, ours, _batch())
    reference.eval()
    with torch.no_grad():
        expected = reference(_batch())
    # the same anchors and outputs, recomputed through detectron2's own modules
    with torch.no_grad():
        images = reference.preprocess_image(_batch())
        features = [reference.backbone(images.tensor)[f] for f in reference.head_in_features]
        logits, deltas = reference._transpose_dense_predictions(
            reference.head(features), [NUM_CLASSES + 1, 4])
        anchors = Boxes.cat(reference.anchor_generator(features)).tensor
    for i, (image, output) in enumerate(zip(images_seen, expected)):
        want = output["instances"]
        assert len(want) == 25 if i == 0 else len(want) > 0
        torch.testing.assert_close(image.base.pred_boxes.tensor, want.pred_boxes.tensor)
        torch.testing.assert_close(image.base.scores, want.scores)
        assert torch.equal(image.base.pred_classes, want.pred_classes)
        anchor, cls = image.base_slot // (NUM_CLASSES + 1), image.base_slot % (NUM_CLASSES + 1)
        assert torch.equal(cls, want.pred_classes)
        torch.testing.assert_close(torch.cat(logits, 1)[i, anchor, cls].sigmoid(), want.scores)
        decoded = Boxes(reference.box2box_transform.apply_deltas(
            torch.cat(deltas, 1)[i, anchor], anchors[anchor]))
        decoded.clip(image.base.image_size)
        torch.testing.assert_close(decoded.tensor, want.pred_boxes.tensor)


# ---- the PG term against every action enumerated (test_pg_estimators' case, K = 3) ----
def _enumerable_anchors():
    """The 8 candidates as positive anchors (zero deltas: each decodes to itself), plus two
    ignored anchors sitting on the objects with score 0.95 in every class and two background
    anchors: the ignored ones must never be candidates."""
    cand, _, _, gt = _enumerable_case()
    anchors = torch.cat([cand, gt.gt_boxes.tensor, torch.tensor([[0.0, 0.0, 30.0, 30.0],
                                                                  [150.0, 150.0, 200.0, 190.0]])])
    labels = torch.cat([GT_CLASSES[MATCH], torch.tensor([-1, -1, NUM_CLASSES, NUM_CLASSES])])
    logits = torch.full((len(anchors), NUM_CLASSES), -4.0)
    logits[torch.arange(8), GT_CLASSES[MATCH]] = torch.logit(P_B)
    logits[8:10] = 3.0
    return anchors, labels, logits, gt


def _pg_gradient(estimator, scale, normalizer):
    anchors, labels, logits, gt = _enumerable_anchors()
    logits = logits[None].clone().requires_grad_(True)
    options = PGOptions(True, 1.0, scale, PGSettings(num_samples=20000,
                                                     reward_estimator=estimator))
    with EventStorage():
        loss = dense.dense_pg_loss(
            torch.nn.functional.logsigmoid(logits), [logits.detach().sigmoid()],
            [torch.zeros(1, len(anchors), 4)], [Boxes(anchors)], [labels], [gt], [IMAGE_SIZE],
            Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
            dense.DenseInference(1.0, 1000, 0.5, 100),  # score threshold 1: D empty, r' = 0
            options, normalizer)
    (grad,) = torch.autograd.grad(loss, logits)
    return grad[0]


def enumerated_advantage(estimator):
    """[8] the exact advantage of the 8 candidates with r' = 0 (D empty), over all 256 actions
    scored by pycocotools: reinforce p_b ∂E[r]/∂p_b (so that A_b (1 − p_b) = ∂E[r]/∂x_b),
    joint Σ_a P(a) r(a)[b ∈ a]."""
    if estimator == "reinforce":
        p = P_B.clone().requires_grad_(True)
        (d_reward,) = torch.autograd.grad(_expected_reward(p, False), p)
        return P_B * d_reward
    advantage = torch.zeros(8)
    for bits, reward in _action_rewards(False).items():
        chosen = torch.tensor(bits, dtype=torch.bool)
        advantage += torch.where(chosen, P_B, 1 - P_B).prod() * reward * chosen
    return advantage


@pytest.mark.parametrize("estimator", ["reinforce", "joint"])
def test_pg_term_gradient_is_the_enumerated_policy_gradient(estimator):
    """reinforce: ∂L/∂x_b = −(c/N) ∂E[r]/∂x_b, E[r] = Σ_a P(a) r(a) over all 256 actions, each
    scored by pycocotools; joint: −(c/N)(1 − p_b) Σ_a P(a) r(a)[b ∈ a] (the paper's r(b) in
    eq. 11's (p_b − 1)). Nothing on the other classes, ignored or background anchors."""
    scale, normalizer = 2.0, 4.0
    grad = _pg_gradient(estimator, scale, normalizer)
    advantage = enumerated_advantage(estimator)
    expected = torch.zeros_like(grad)
    expected[torch.arange(8), GT_CLASSES[MATCH]] = -scale / normalizer * advantage * (1 - P_B)
    torch.testing.assert_close(grad, expected, atol=0.015 * scale / normalizer, rtol=0)
    assert grad[torch.arange(8), GT_CLASSES[MATCH]].abs().min() > 0


def test_kept_box_credit_goes_to_the_detected_logit():
    """With the credits, the slots that get an advantage are the candidates' and D's own
    (anchor, class) logits, including boxes of background anchors."""
    _, ours = _models("MODEL.PG.REWARD_ESTIMATOR", "swap", "MODEL.PG.KEPT_BOX_CREDIT", "True")
    seen = []
    real = dense.advantages_of_images
    dense_run = lambda images, *a: seen.append((images, real(images, *a))) or seen[-1][1]  # noqa
    with pytest.MonkeyPatch.context() as m:
        m.setattr(dense, "advantages_of_images", dense_run)
        ours.train()
        with EventStorage():
            ours(_batch())
    (images, pg), = seen
    image = images[0]
    allowed = torch.zeros(image.num_slots, dtype=torch.bool)
    allowed[image.cand_slot] = True
    allowed[image.base_slot] = True
    credited = pg.candidate_mask[: image.num_slots]
    assert credited[image.base_slot].all() and not credited[~allowed].any()
    assert not pg.candidate_mask[image.num_slots:].any(), "image without ground truth"


# UPDATE pairwise needs swap with the credits and the norm at their defaults
PAIRWISE = ["MODEL.PG.UPDATE", "pairwise", "MODEL.PG.REWARD_ESTIMATOR", "swap",
            "MODEL.PG.KEPT_BOX_CREDIT", "False", "MODEL.PG.SUPPRESSOR_CREDIT", "False",
            "MODEL.PG.ADVANTAGE_NORM", "none"]


def test_background_margin_is_refused_for_a_sigmoid_classifier():
    """RetinaNet scores each class by its own sigmoid: there is no background logit."""
    with pytest.raises(ConfigError) as e:
        _models(*PAIRWISE, "MODEL.PG.PAIRWISE_MARGIN", "background")
    assert "MODEL.PG.PAIRWISE_MARGIN background" in str(e.value) and "\n" not in str(e.value)


# the paper-literal term over the config's one-stage choice (swap, both credits, image_max, c 0.5)
PAPER_TERM = ["MODEL.PG.REWARD_ESTIMATOR", "joint", "MODEL.PG.KEPT_BOX_CREDIT", "False",
              "MODEL.PG.SUPPRESSOR_CREDIT", "False", "MODEL.PG.ADVANTAGE_NORM", "none",
              "MODEL.PG.REWARD_SCALE", "1.0"]


@pytest.mark.parametrize("options", [
    [],
    PAPER_TERM,
    [*PAPER_TERM, "MODEL.PG.REWARD_ESTIMATOR", "reinforce", "MODEL.PG.SAMPLE_NMS", "True",
     "MODEL.PG.GAMMA", "0.0"],
    PAIRWISE,
])
def test_two_training_iterations_with_pg(options):
    """Random weights, a batch with an unannotated image: finite losses and gradients, and the
    pg/* scalars logged at every step."""
    _, model = _models(*options)
    model.train()
    with EventStorage() as storage:
        for _ in range(2):
            losses = model(_batch())
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            total.backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        assert torch.isfinite(p.grad).all()
                        p -= 0.001 * p.grad
                        p.grad = None
            storage.step()
        for key in ("pg/baseline_reward", "pg/sampled_reward", "pg/mean_weight",
                    "pg/negative_weight_frac", "pg/reward_time"):
            assert len(storage.history(key).values()) == 2, key


def test_non_finite_logits_stop_naming_the_image():
    _, model = _models()
    model.train()
    clean = model.head.forward

    def poisoned(features):
        logits, deltas = clean(features)
        logits[0] = torch.cat([logits[0][:1], torch.full_like(logits[0][1:], float("nan"))])
        return logits, deltas

    model.head.forward = poisoned
    with EventStorage(), pytest.raises(FloatingPointError, match=r"batch positions \[1\]"):
        model(_batch())


def test_model_zoo_retinanet_checkpoint_fills_every_weight(tmp_path):
    """detectron2's own RetinaNet R50-FPN 3x, random weights saved as the model zoo saves them,
    loads into the PG config's model with nothing missing or left over."""
    torch.manual_seed(0)
    path, reference = model_zoo_checkpoint("COCO-Detection/retinanet_R_50_FPN_3x.yaml", tmp_path)
    cfg = build_cfg(os.path.join(REPO, "pgdet", "configs", "model_zoo", "pg_retinanet_R_50_FPN_3x.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(1)
    model = build_model(cfg)
    assert type(model).__name__ == "PGRetinaNet" and model.pg.enabled
    assert set(model.state_dict()) == set(reference)
    PGCheckpointer(model).load(path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_trainer_runs_two_pg_iterations_on_the_demo(tmp_path):
    """pgdet's Trainer (data checks with RetinaNet's class count, the PG model check) on the demo
    data: two iterations, every pg/* scalar in metrics.json."""
    from pgdet.engine import Trainer

    cfg = _cfg("SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
               "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
               "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path))
    trainer = Trainer(cfg)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    last = records[-1]
    assert last["iteration"] == 1 and math.isfinite(last["total_loss"])
    for key in ("pg/sampled_reward", "pg/mean_weight", "pg/reward_time"):
        assert key in last, key
