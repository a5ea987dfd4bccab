"""OHEMROIHeads: which RoIs it trains on, where the gradient goes, and one training step.

The hand-made heads pool a one-channel feature map whose value is the x coordinate, so each
RoI's feature is its centre x and its losses follow by hand (softplus for the 2-way
cross-entropy, the L1 of the ground-truth deltas when the predicted deltas are 0).
"""
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from pgdet.config import add_pgdet_config
from pgdet.modeling.comparators.ohem_roi_heads import OHEMROIHeads, check_ohem_config

H, W = 64, 80
REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _ramp_features(requires_grad=False):
    """[1, 1, H, W] map whose value at pixel column x is x + 0.5, its centre's x coordinate, so
    ROIAlignV2 with one output cell returns the RoI's centre x."""
    ramp = (torch.arange(W, dtype=torch.float32) + 0.5).expand(1, 1, H, W).clone()
    return {"p": ramp.requires_grad_(requires_grad)}


def _heads(num_classes, cls_weights, pool_size, batch_size, nms_thresh, bbox_weights=None):
    """OHEM heads whose box head is the identity on the pooled centre x: logits = cls_weights * x,
    deltas = bbox_weights * x (0 by default)."""
    predictor = FastRCNNOutputLayers(
        ShapeSpec(channels=1),
        box2box_transform=Box2BoxTransform(REG_WEIGHTS),
        num_classes=num_classes,
    )
    with torch.no_grad():
        predictor.cls_score.weight.copy_(torch.tensor(cls_weights).view(-1, 1))
        predictor.cls_score.bias.zero_()
        predictor.bbox_pred.weight.copy_(
            torch.zeros(4 * num_classes, 1) if bbox_weights is None else bbox_weights.view(-1, 1)
        )
        predictor.bbox_pred.bias.zero_()
    heads = OHEMROIHeads(
        num_classes=num_classes,
        batch_size_per_image=pool_size,
        positive_fraction=1.0,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        proposal_append_gt=False,
        box_in_features=["p"],
        box_pooler=ROIPooler(
            output_size=1, scales=(1.0,), sampling_ratio=2, pooler_type="ROIAlignV2"
        ),
        box_head=nn.Flatten(),
        box_predictor=predictor,
        ohem_nms_thresh=nms_thresh,
        ohem_batch_size_per_image=batch_size,
    )
    return heads.train()


def _instances(proposal_boxes, gt_boxes, gt_classes):
    proposals = Instances((H, W))
    proposals.proposal_boxes = Boxes(torch.tensor(proposal_boxes, dtype=torch.float32))
    targets = Instances((H, W))
    targets.gt_boxes = Boxes(torch.tensor(gt_boxes, dtype=torch.float32))
    targets.gt_classes = torch.tensor(gt_classes)
    return proposals, targets


# GT [40, 20, 60, 40], class 0; logits (0.1 x, 0); losses by hand (x = centre x):
HAND_PROPOSALS = [
    [40, 20, 60, 40],  # P0 = GT, fg: softplus(-5.0) = 0.0067
    [50, 45, 62, 60],  # P1 bg: softplus(5.6) = 5.604, but IoU(P1, P2) = 154/206 = 0.75 > 0.7
    [51, 46, 63, 61],  # P2 bg: softplus(5.7) = 5.703, the hardest
    [2, 2, 14, 14],  # P3 bg: softplus(0.8) = 1.171
    [42, 22, 62, 42],  # P4 fg (IoU 0.68): softplus(-5.2) + |dx| + |dy| = 0.0055 + 1 + 1 = 2.0055
    [6, 6, 18, 18],  # P5 bg: softplus(1.2) = 1.463; IoU(P3, P5) = 64/224 = 0.29
]
HAND_HARDEST_3 = [HAND_PROPOSALS[i] for i in (2, 4, 5)]


def _train_forward(heads, features, proposals, targets):
    with EventStorage():
        pool_proposals = heads.label_and_sample_proposals(proposals, targets)
        hard = heads.select_hard_examples(features, pool_proposals)
        losses = heads._forward_box(features, pool_proposals)
    return hard, losses


def test_selects_hardest_after_roi_nms_by_hand():
    heads = _heads(1, [0.1, 0.0], pool_size=100, batch_size=3, nms_thresh=0.7)
    proposals, targets = _instances(HAND_PROPOSALS, [[40, 20, 60, 40]], [0])
    hard, _ = _train_forward(heads, _ramp_features(), [proposals], [targets])
    assert hard[0].proposal_boxes.tensor.tolist() == HAND_HARDEST_3  # hardest first
    assert hard[0].gt_classes.tolist() == [1, 0, 1]
    assert hard[0]._pg_targets is targets  # PGROIHeads' attribute survives the selection


def test_nms_threshold_one_suppresses_nothing():
    heads = _heads(1, [0.1, 0.0], pool_size=100, batch_size=3, nms_thresh=1.0)
    proposals, targets = _instances(HAND_PROPOSALS, [[40, 20, 60, 40]], [0])
    hard, _ = _train_forward(heads, _ramp_features(), [proposals], [targets])
    assert hard[0].proposal_boxes.tensor.tolist() == [HAND_PROPOSALS[i] for i in (2, 1, 4)]


def test_gradient_flows_only_through_selected_rois():
    """Loss and feature gradient equal detectron2's standard loss on the 3 hand-picked RoIs;
    the pixels that only the unselected P3 covers get no gradient."""
    heads = _heads(1, [0.1, 0.0], pool_size=100, batch_size=3, nms_thresh=0.7)
    proposals, targets = _instances(HAND_PROPOSALS, [[40, 20, 60, 40]], [0])
    features = _ramp_features(requires_grad=True)
    _, losses = _train_forward(heads, features, [proposals], [targets])
    sum(losses.values()).backward()

    expected_proposals = Instances((H, W))
    expected_proposals.proposal_boxes = Boxes(torch.tensor(HAND_HARDEST_3))
    expected_proposals.gt_classes = torch.tensor([1, 0, 1])
    expected_proposals.gt_boxes = Boxes(torch.tensor([[40.0, 20, 60, 40]]).repeat(3, 1))
    reference_features = _ramp_features(requires_grad=True)
    with EventStorage():
        reference = StandardROIHeads._forward_box(heads, reference_features, [expected_proposals])
    sum(reference.values()).backward()

    # by hand: mean CE over the 3 RoIs and box loss 2 / 3
    ce = (math.log1p(math.exp(5.7)) + math.log1p(math.exp(-5.2)) + math.log1p(math.exp(1.2))) / 3
    assert losses["loss_cls"].item() == pytest.approx(ce, rel=1e-3)
    assert losses["loss_box_reg"].item() == pytest.approx(2 / 3, rel=1e-3)
    for key in ("loss_cls", "loss_box_reg"):
        assert losses[key].item() == pytest.approx(reference[key].item(), rel=1e-6)
    grad = features["p"].grad[0, 0]
    assert torch.allclose(grad, reference_features["p"].grad[0, 0], atol=1e-7)
    assert grad[2:5, 2:5].abs().max() == 0  # inside P3 only
    assert grad[6:18, 6:18].abs().max() > 0  # inside P5, selected
    assert grad[47:59, 52:61].abs().max() > 0  # inside P2, selected


def _box_deltas(p, g):
    """Box2BoxTransform.get_deltas written out for one pair of boxes."""
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    return [
        REG_WEIGHTS[0] * ((g[0] + g[2]) / 2 - (p[0] + p[2]) / 2) / pw,
        REG_WEIGHTS[1] * ((g[1] + g[3]) / 2 - (p[1] + p[3]) / 2) / ph,
        REG_WEIGHTS[2] * math.log(gw / pw),
        REG_WEIGHTS[3] * math.log(gh / ph),
    ]


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_selection(proposals, gts, gt_classes, cls_weights, bbox_weights, nms_thresh, batch):
    """Plain OHEM: label each RoI by its best GT (IoU >= 0.5), its loss = CE + L1 of the deltas of
    its class, then greedy NMS over the RoIs by decreasing loss and keep the first `batch`."""
    num_classes = len(cls_weights) - 1
    losses = []
    for p in proposals:
        x = (p[0] + p[2]) / 2
        ious = [_iou(p, g) for g in gts]
        best = max(range(len(gts)), key=lambda j: ious[j])
        label = gt_classes[best] if ious[best] >= 0.5 else num_classes
        logits = [w * x for w in cls_weights]
        log_z = math.log(sum(math.exp(v) for v in logits))
        loss = log_z - logits[label]
        if label < num_classes:
            deltas = [w * x for w in bbox_weights[4 * label : 4 * label + 4]]
            loss += sum(abs(d - t) for d, t in zip(deltas, _box_deltas(p, gts[best])))
        losses.append(loss)
    order = sorted(range(len(proposals)), key=lambda i: -losses[i])
    kept = []
    for i in order:
        if all(_iou(proposals[i], proposals[j]) <= nms_thresh for j in kept):
            kept.append(i)
    return kept[:batch]


def test_selection_matches_plain_reference_on_random_images():
    gen = torch.Generator().manual_seed(0)
    cls_weights = [0.02, -0.01, 0.0]
    bbox_weights = torch.randn(8, generator=gen) * 0.02
    heads = _heads(
        2, cls_weights, pool_size=1000, batch_size=12, nms_thresh=0.6, bbox_weights=bbox_weights
    )
    proposals, targets, expected = [], [], []
    for _ in range(3):
        gts = [[10.0, 8, 40, 40], [35.0, 20, 70, 58]]
        centres = torch.rand(60, 2, generator=gen) * torch.tensor([50.0, 30]) + 15
        sizes = torch.rand(60, 2, generator=gen) * 15 + 25
        boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], 1).clamp(1, W - 1)
        boxes[:, 3] = boxes[:, 3].clamp(max=H - 1)
        image_proposals, image_targets = _instances(boxes.tolist(), gts, [0, 1])
        proposals.append(image_proposals)
        targets.append(image_targets)
        kept = _reference_selection(
            boxes.tolist(), gts, [0, 1], cls_weights, bbox_weights.tolist(), 0.6, 12
        )
        expected.append(boxes[kept])
    features = {"p": _ramp_features()["p"].repeat(3, 1, 1, 1)}
    hard, _ = _train_forward(heads, features, proposals, targets)
    for got, want in zip(hard, expected):
        assert len(got) == 12
        assert (got.gt_classes < 2).any() and (got.gt_classes == 2).any()
        assert torch.equal(got.proposal_boxes.tensor, want)


def _tiny_cfg():
    cfg = add_pgdet_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 150
    cfg.MODEL.ROI_HEADS.NAME = "OHEMROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.OHEM.POOL_SIZE_PER_IMAGE = 100
    cfg.MODEL.OHEM.BATCH_SIZE_PER_IMAGE = 16
    return cfg


def test_one_training_step_of_a_tiny_model():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg())
    heads = model.roi_heads
    assert isinstance(heads, OHEMROIHeads)
    assert (heads.batch_size_per_image, heads.positive_fraction) == (100, 1.0)
    rows = []
    heads.box_predictor.register_forward_hook(
        lambda module, inputs, outputs: rows.append((len(inputs[0]), torch.is_grad_enabled()))
    )
    inputs = []
    for _ in range(2):
        instances = Instances((96, 128))
        instances.gt_boxes = Boxes(torch.tensor([[10.0, 10, 60, 70], [70, 20, 120, 90]]))
        instances.gt_classes = torch.tensor([0, 2])
        inputs.append({"image": torch.rand(3, 96, 128) * 255, "instances": instances})
    with EventStorage() as storage:
        losses = model(inputs)
        sum(losses.values()).backward()
        history = storage.histories()
    assert set(losses) >= {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    # the whole labelled pool (<= 2 x 100 RoIs) without gradient, then the 2 x 16 hardest with it
    pool_per_image = sum(history[f"roi_head/num_{k}_samples"].latest() for k in ("fg", "bg"))
    pool = 2 * pool_per_image
    assert rows == [(pool, False), (32, True)] and pool > 32
    assert history["ohem/num_fg_samples"].latest() + history["ohem/num_bg_samples"].latest() == 16
    model.eval()
    with torch.no_grad():
        detections = model([{"image": inputs[0]["image"]}])
    assert "instances" in detections[0]


@pytest.mark.parametrize(
    "key,value",
    [
        ("POOL_SIZE_PER_IMAGE", 8),
        ("NMS_THRESH", 0.0),
        ("NMS_THRESH", 1.5),
        ("BATCH_SIZE_PER_IMAGE", 0),
    ],
)
def test_config_check_names_the_key(key, value):
    cfg = _tiny_cfg()
    check_ohem_config(cfg)  # valid
    cfg.MODEL.OHEM[key] = value
    with pytest.raises(ValueError, match=f"MODEL.OHEM.{key}"):
        check_ohem_config(cfg)
