"""The policy gradient for FCOS against independent oracles.

- detectron2's own FCOS, same weights and inputs (PG off; γ = 1 with c = 0);
- detectron2's FCOS in eval mode for the baseline detections D;
- every action enumerated and scored by pycocotools for the PG term's gradient (the case and
  oracle of tests/test_pg_retinanet.py), with a centerness that would change p_b if it entered
  the policy;
- detectron2's own COCO-Detection/fcos_R_50_FPN_1x.py for the LazyConfig.

The detector is detectron2's FCOS with a three-conv backbone (strides 8, 16, 32) and a one-conv
head, random weights, on the small images of the RetinaNet tests.
"""
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from detectron2.modeling.meta_arch.fcos import FCOS, FCOSHead
from detectron2.structures import Boxes, ImageList
from detectron2.utils.events import EventStorage
from test_lazy_config import REPO, assert_paper_pg_stage, changed_keys
from test_pg_estimators import GT_CLASSES, MATCH, P_B
from test_pg_loss import IMAGE_SIZE, NUM_CLASSES
from test_pg_retinanet import (_batch, _enumerable_anchors, _spread_scores, enumerated_advantage,
                               pg_images_of_a_training_step)
from test_pg_training import finite_sgd_step
from torch import nn

from pgdet.engine.lazy import load_lazy_config
from pgdet.modeling import PGFCOS
from pgdet.modeling.pg.pg_options import PGOptions
from pgdet.modeling.pg.policy_gradient import PGSettings

LAZY = f"{REPO}/pgdet/configs/lazy/pg_fcos_R_50_FPN_1x.py"
ORIGINAL = "COCO-Detection/fcos_R_50_FPN_1x.py"
CLASSES = NUM_CLASSES + 1  # _batch's classes are 0..3


class _TinyBackbone(Backbone):
    """p3, p4, p5 at strides 8, 16, 32, 32 channels: one strided conv each."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 32, 3, stride=8, padding=1),
                                    nn.Conv2d(32, 32, 3, stride=2, padding=1),
                                    nn.Conv2d(32, 32, 3, stride=2, padding=1)])

    def forward(self, x):
        features = {}
        for level, conv in enumerate(self.convs, start=3):
            x = features[f"p{level}"] = torch.relu(conv(x))
        return features

    def output_shape(self):
        return {f"p{level}": ShapeSpec(channels=32, stride=2 ** level) for level in (3, 4, 5)}


def _build(cls, **kwargs):
    return cls(backbone=_TinyBackbone(), head=FCOSHead(
        input_shape=[ShapeSpec(channels=32)] * 3, conv_dims=[32], num_classes=CLASSES, norm="GN"),
        head_in_features=["p3", "p4", "p5"], num_classes=CLASSES,
        pixel_mean=[103.53, 116.28, 123.675], pixel_std=[1.0, 1.0, 1.0], **kwargs)


def _models(pg=PGOptions(enabled=True), **kwargs):
    """(detectron2's FCOS, PGFCOS) with the same weights: class scores spread as for RetinaNet
    (so D is not empty and NMS, top-k and the cap act) and a centerness that varies by point
    (so ranking by sqrt(σ(cls)·σ(ctr)) is not ranking by σ(cls))."""
    torch.manual_seed(0)
    ours = _build(PGFCOS, pg=pg, **kwargs)
    _spread_scores(ours)
    with torch.no_grad():
        ours.head.ctrness.weight.mul_(200)
    reference = _build(FCOS, **kwargs)
    reference.load_state_dict(ours.state_dict())
    return reference, ours


@pytest.mark.parametrize("pg", [PGOptions(enabled=False), PGOptions(True, 1.0, 0.0)])
def test_pg_off_is_detectron2_fcos_loss(pg):
    """Losses and every parameter's gradient, over two iterations (the normaliser is a moving
    average)."""
    reference, ours = _models(pg)
    reference.train()
    ours.train()
    for _ in range(2):
        with EventStorage():
            ref, got = reference(_batch()), ours(_batch())
        assert ref.keys() == got.keys() == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-6, atol=1e-7)
        grads = [torch.autograd.grad(sum(loss.values()), list(m.parameters()), allow_unused=True)
                 for loss, m in ((ref, reference), (got, ours))]
        for a, b in zip(*grads):
            assert (a is None) == (b is None)
            if a is not None:
                # CPU kernels differ by ~1e-8 between two modules' backward passes (the conv
                # biases before GroupNorm have a zero gradient up to that noise)
                torch.testing.assert_close(a, b, rtol=1e-5,
                                           atol=1e-5 * float(a.abs().max()) + 1e-7)


def test_baseline_detections_are_fcos_eval_inference(monkeypatch):
    """D of each training image equals detectron2's FCOS in eval mode (per-level top-k and the cap
    binding); each box's slot is the (anchor point, class) whose centerness-weighted score and
    decoded box it is; the candidates are the positive points with p_b = σ(class logit)."""
    reference, ours = _models(test_topk_candidates=40, max_detections_per_image=12)
    images_seen = pg_images_of_a_training_step(monkeypatch, ours, _batch())
    reference.eval()
    with torch.no_grad():
        expected = reference(_batch())
        reference.max_detections_per_image = 100
        uncapped = reference(_batch())
        images = reference.preprocess_image(_batch())
        features = [reference.backbone(images.tensor)[f] for f in reference.head_in_features]
        logits, deltas, ctr = (torch.cat(x, 1) for x in reference._transpose_dense_predictions(
            reference.head(features), [CLASSES, 4, 1]))
        anchors = reference.anchor_generator(features)
        labels, _ = reference.label_anchors(anchors, [b["instances"] for b in _batch()])
        anchors = Boxes.cat(anchors).tensor
    for i, (image, output, more) in enumerate(zip(images_seen, expected, uncapped)):
        want = output["instances"]
        # the cap binds (post-processing then drops the empty boxes, as D does)
        assert 0 < len(want) <= 12 < len(more["instances"])
        torch.testing.assert_close(image.base.pred_boxes.tensor, want.pred_boxes.tensor)
        torch.testing.assert_close(image.base.scores, want.scores)
        assert torch.equal(image.base.pred_classes, want.pred_classes)
        anchor, cls = image.base_slot // CLASSES, image.base_slot % CLASSES
        assert torch.equal(cls, want.pred_classes)
        torch.testing.assert_close(
            (logits[i, anchor, cls].sigmoid() * ctr[i, anchor, 0].sigmoid()).sqrt(), want.scores)
        decoded = Boxes(reference.box2box_transform.apply_deltas(deltas[i, anchor],
                                                                 anchors[anchor]))
        decoded.clip(image.base.image_size)
        torch.testing.assert_close(decoded.tensor, want.pred_boxes.tensor)
        positive = torch.nonzero(labels[i] < CLASSES, as_tuple=True)[0]
        assert torch.equal(image.cand_slot, positive * CLASSES + labels[i][positive])
        torch.testing.assert_close(image.cand_scores, logits[i, positive, labels[i][positive]]
                                   .sigmoid())
    assert len(images_seen[0].cand_slot) > 0 and len(images_seen[1].cand_slot) == 0


class _FixedAnchors(nn.Module):
    """An anchor generator that returns the given anchors as one level."""

    def __init__(self, anchors):
        super().__init__()
        self.anchors = anchors

    def forward(self, features):
        return [Boxes(self.anchors)]


@pytest.mark.parametrize("estimator", ["reinforce", "joint"])
def test_pg_term_gradient_is_the_enumerated_policy_gradient(estimator):
    """PGFCOS.forward_training on the RetinaNet test's 8 candidates (one level of 12 points; the
    ignored anchors there are background here, FCOS ignoring none), γ = 0: ∂loss_fcos_cls/∂x
    is −(c/N) A_b (1 − p_b) on each candidate's true-class logit with p_b = σ(x), although the
    centerness (σ = 0.12 .. 0.88) would make the test-time score a different probability;
    nothing on the other logits, the centerness or the deltas."""
    anchors, labels, logits, gt = _enumerable_anchors()
    labels[labels < 0] = NUM_CLASSES
    num = len(anchors)
    scale = 2.0
    _, model = _models(PGOptions(True, 0.0, scale, PGSettings(num_samples=20000,
                                                              reward_estimator=estimator)))
    model.num_classes = NUM_CLASSES  # the case's K (the head, built for more, is not run)
    model.test_score_thresh = 1.0  # D empty, r' = 0, as in the oracle
    model.anchor_generator = _FixedAnchors(anchors)
    matched = gt.gt_boxes.tensor[torch.cat([MATCH, MATCH.new_zeros(num - 8)])]
    model.label_anchors = lambda anchors, gt_instances: ([labels], [matched])
    # predictions as the head outputs them: [N, channels, H = 1, W = 12]
    x = logits.T.reshape(1, NUM_CLASSES, 1, num).clone().requires_grad_(True)
    deltas = model.box2box_transform.get_deltas(anchors, anchors).T.reshape(1, 4, 1, num)
    deltas.requires_grad_(True)
    ctr = torch.linspace(-2.0, 2.0, num).reshape(1, 1, 1, num).requires_grad_(True)
    model.train()
    with EventStorage():
        losses = model.forward_training(ImageList(torch.zeros(1, 3, *IMAGE_SIZE), [IMAGE_SIZE]),
                                        None, [[x], [deltas], [ctr]], [gt])
    grad_x, grad_deltas, grad_ctr = torch.autograd.grad(losses["loss_fcos_cls"], [x, deltas, ctr],
                                                        allow_unused=True)
    grad = grad_x.reshape(NUM_CLASSES, num).T
    expected = torch.zeros_like(grad)
    normalizer = model.loss_normalizer
    expected[torch.arange(8), GT_CLASSES[MATCH]] = (
        -scale / normalizer * enumerated_advantage(estimator) * (1 - P_B))
    torch.testing.assert_close(grad, expected, atol=0.015 * scale / normalizer, rtol=0)
    assert grad[torch.arange(8), GT_CLASSES[MATCH]].abs().min() > 0
    assert grad_deltas is None or not grad_deltas.any()
    assert grad_ctr is None or not grad_ctr.any()


@pytest.mark.parametrize("settings", [
    PGSettings(),
    PGSettings(reward_estimator="swap", kept_box_credit=True, suppressor_credit=True,
               advantage_norm="image_max"),
    PGSettings(reward_estimator="reinforce", sample_nms=True),
])
def test_two_training_iterations_with_pg(settings):
    """Random weights, a batch with an unannotated image: finite losses and gradients, and the
    pg/* scalars logged at every step."""
    _, model = _models(PGOptions(True, 1.0, 1.0, settings))
    model.train()
    with EventStorage() as storage:
        for _ in range(2):
            finite_sgd_step(model, _batch(), storage, lr=0.001)
        for key in ("pg/baseline_reward", "pg/sampled_reward", "pg/mean_weight",
                    "pg/negative_weight_frac", "pg/reward_time"):
            assert len(storage.history(key).values()) == 2, key


def test_lazy_config_is_detectron2s_fcos_with_pg_and_the_pg_stage():
    """Only the model class, its PG options, the data checks and the stage change; no FCOS
    checkpoint exists in detectron2's model zoo, so the base's initialisation is kept. The model
    instantiates (random weights, nothing loaded) as PGFCOS with PG on and the RetinaNet configs'
    one-stage choice (γ = 1, swap + credits + image_max, c = 0.5), and exactly
    detectron2's FCOS parameters."""
    ours = LazyConfig.load(LAZY)
    original = model_zoo.get_config(ORIGINAL)
    changed, keys = changed_keys(ours, original)
    assert changed == {
        "model._target_", *{k for k in keys if k.startswith("model.pg.")},
        "dataloader.train.dataset._target_", "dataloader.train.dataset.num_classes",
        "dataloader.train.dataset.filter_empty", "dataloader.train.dataset.num_classes_key",
        "dataloader.train.mapper._target_", "train.output_dir", "train.seed", "train.max_iter",
        "train.eval_period", "train.checkpointer.period", "optimizer.lr",
        *{k for k in keys if k.startswith("lr_multiplier.")},
    }
    with pytest.raises(RuntimeError, match="not available"):
        model_zoo.get_checkpoint_url(ORIGINAL)
    assert ours.train.init_checkpoint == original.train.init_checkpoint
    assert_paper_pg_stage(ours, original, batch=16)

    model = instantiate(load_lazy_config(LAZY, ["train.seed=3"]).model)
    assert type(model) is PGFCOS
    assert model.pg == PGOptions(True, 1.0, 0.5, PGSettings(
        reward_estimator="swap", suppressor_credit=True, kept_box_credit=True,
        advantage_norm="image_max"), seed=3)
    reference = instantiate(original.model)
    assert type(reference) is FCOS
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
