"""The paper's two detectors (Rao et al. 2018 §4.1, SPEC §3), checked against the paper's numbers.

Every expected value here — strides, dilation, channel counts, anchor areas, the 2-px proposal
threshold, which layers a detectron2 checkpoint fills — is written from the paper, not read back
from pgdet's code. Models are built from the real R-101 configs without weights; the checkpoint
tests use depth 50, which shares the same layer names and shapes outside the depth of res4.
"""
import math
import os

import detectron2
import pytest
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.proposal_generator.proposal_utils import find_top_rpn_proposals
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

import pgdet  # noqa: F401  (registers pgdet's components)
from pgdet.config import add_pgdet_config

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "pgdet", "configs")
D2_CONFIGS = os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs")
HEIGHT, WIDTH = 128, 160  # divisible by 32, so every level's size is exact


def load_cfg(path, *opts):
    cfg = get_cfg()
    add_pgdet_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *opts])
    return cfg


def build(config_name, *opts):
    """The config's model, with at most 64 proposals per image: the structure is unchanged and
    the 14x14x2048 box-head conv stays cheap on CPU."""
    torch.manual_seed(0)
    few_proposals = ["MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 64]
    return build_model(load_cfg(os.path.join(CONFIGS, config_name), *few_proposals, *opts))


@pytest.fixture(scope="module")
def c5_model():
    return build("frcnn_R101.yaml")


@pytest.fixture(scope="module")
def fpn_model():
    return build("frcnn_R101_FPN.yaml")


@pytest.fixture(scope="module")
def models(c5_model, fpn_model):
    return {"c5": c5_model, "fpn": fpn_model}


def training_batch():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, HEIGHT, WIDTH, generator=generator) * 255
    targets = Instances((HEIGHT, WIDTH))
    targets.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 60.0, 90.0], [70.0, 10.0, 150.0, 60.0]]))
    targets.gt_classes = torch.tensor([1, 5])
    return [{"image": image, "instances": targets, "height": HEIGHT, "width": WIDTH}]


def backbone_features(model):
    with torch.no_grad():
        images = model.preprocess_image(training_batch())
        return model.backbone(images.tensor)


@pytest.mark.parametrize("arch", ["c5", "fpn"])
def test_forward_backward_gives_finite_losses_and_trains_new_layers(models, arch):
    model = models[arch]
    model.train()
    model.zero_grad()
    with EventStorage():
        losses = model(training_batch())
        sum(losses.values()).backward()
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    for name, value in losses.items():
        assert torch.isfinite(value), name
    new_layers = [model.roi_heads.box_head.conv, model.proposal_generator.rpn_head.conv]
    if arch == "fpn":
        new_layers.append(model.backbone.top_block.p6)
    for layer in new_layers:
        assert torch.isfinite(layer.weight.grad).all()
        assert layer.weight.grad.abs().sum() > 0
    # "layers in first two stages of ResNet-101 ... are freezed"
    bottom_up = model.backbone.bottom_up if arch == "fpn" else model.backbone
    frozen = [bottom_up.stem, bottom_up.res2]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in bottom_up.res3.parameters())


@pytest.mark.parametrize("arch", ["c5", "fpn"])
def test_inference_returns_at_most_100_detections(models, arch):
    model = models[arch]
    model.eval()
    with torch.no_grad():
        (output,) = model([{"image": training_batch()[0]["image"], "height": 256, "width": 320}])
    assert len(output["instances"]) <= 100
    assert output["instances"].image_size == (256, 320)


@pytest.mark.parametrize("arch", ["c5", "fpn"])
def test_res5_is_dilated_with_stride_16(models, arch):
    model = models[arch]
    bottom_up = model.backbone.bottom_up if arch == "fpn" else model.backbone
    assert bottom_up.output_shape()["res5"].stride == 16
    model.eval()
    with torch.no_grad():
        res5 = bottom_up(model.preprocess_image(training_batch()).tensor)["res5"]
    assert res5.shape == (1, 2048, HEIGHT // 16, WIDTH // 16)
    blocks = list(bottom_up.res5)
    assert len(blocks) == 3  # ResNet-101's res5
    for block in blocks:
        assert block.conv2.kernel_size == (3, 3) and block.conv2.dilation == (2, 2)
        convs = [block.conv1, block.conv2, block.conv3]
        convs += [block.shortcut] if block.shortcut is not None else []
        assert all(conv.stride == (1, 1) for conv in convs)


@pytest.mark.parametrize("arch", ["c5", "fpn"])
def test_box_head_is_strided_conv_to_7x7x256_then_two_1024_fc(models, arch):
    model = models[arch]
    head = model.roi_heads.box_head
    outputs = {}

    def keep_first_output(name):
        def hook(module, inputs, output):
            outputs.setdefault(name, output)
        return hook

    hooks = [module.register_forward_hook(keep_first_output(name)) for name, module in
             [("pooled", model.roi_heads.box_pooler), ("conv", head.conv), ("head", head)]]
    model.train()  # training: the sampled RoIs include the ground truth, so there are some
    try:
        with EventStorage():
            model(training_batch())
    finally:
        for hook in hooks:
            hook.remove()
    in_channels = 2048 if arch == "c5" else 256  # res5, or an FPN level
    num_rois = len(outputs["pooled"])
    assert num_rois > 0
    assert outputs["pooled"].shape == (num_rois, in_channels, 14, 14)
    assert outputs["conv"].shape == (num_rois, 256, 7, 7)
    assert outputs["head"].shape == (num_rois, 1024)
    assert (outputs["conv"] >= 0).all() and (outputs["head"] >= 0).all()  # ReLU after each layer
    fcs = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(fc.in_features, fc.out_features) for fc in fcs] == [(7 * 7 * 256, 1024), (1024, 1024)]
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())


def anchor_shapes(anchors: Boxes, feature):
    """Anchors per position, and the sorted (area, h/w) pairs of the distinct anchor shapes."""
    boxes = anchors.tensor
    per_position = len(boxes) // (feature.shape[-2] * feature.shape[-1])
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    shapes = {(round((width * height)[i].item()), round((height / width)[i].item(), 3))
              for i in range(len(boxes))}
    return per_position, sorted(shapes)


RATIOS = (0.5, 1.0, 2.0)


def test_c5_rpn_has_15_anchors_per_position_on_res5(c5_model):
    rpn = c5_model.proposal_generator
    (res5,) = [backbone_features(c5_model)[f] for f in rpn.in_features]
    assert rpn.in_features == ["res5"]
    objectness, deltas = rpn.rpn_head([res5])
    assert objectness[0].shape == (1, 15, HEIGHT // 16, WIDTH // 16)
    assert deltas[0].shape == (1, 60, HEIGHT // 16, WIDTH // 16)
    assert rpn.rpn_head.conv.out_channels == 512
    (anchors,) = rpn.anchor_generator([res5])
    per_position, shapes = anchor_shapes(anchors, res5)
    assert per_position == 15
    assert shapes == sorted((s * s, r) for s in (32, 64, 128, 256, 512) for r in RATIOS)


def test_fpn_levels_strides_and_channels(fpn_model):
    backbone = fpn_model.backbone
    assert {k: (v.stride, v.channels) for k, v in backbone.output_shape().items()} == {
        "p2": (4, 256), "p3": (8, 256), "p5": (16, 256), "p6": (32, 256)}
    features = backbone_features(fpn_model)
    for name, stride in {"p2": 4, "p3": 8, "p5": 16, "p6": 32}.items():
        assert features[name].shape == (1, 256, HEIGHT // stride, WIDTH // stride), name
    # laterals over C2, C3, C5 of ResNet-101: 256, 512, 2048 channels
    assert [backbone.fpn_lateral2.in_channels, backbone.fpn_lateral3.in_channels,
            backbone.fpn_lateral5.in_channels] == [256, 512, 2048]


def test_p6_is_a_3x3_stride2_conv_on_c5_not_on_p5(fpn_model):
    backbone = fpn_model.backbone
    captured = {}
    hook = backbone.bottom_up.res5.register_forward_hook(lambda m, i, o: captured.update(c5=o))
    try:
        features = backbone_features(fpn_model)
    finally:
        hook.remove()
    p6 = backbone.top_block.p6
    assert p6.weight.shape == (256, 2048, 3, 3)
    expected = F.conv2d(captured["c5"], p6.weight, p6.bias, stride=2, padding=1)
    torch.testing.assert_close(features["p6"], expected)

    # zeroing P5's output conv changes P5 but must leave P6 untouched
    output5 = backbone.fpn_output5
    saved = output5.weight.detach().clone()
    with torch.no_grad():
        output5.weight.zero_()
    try:
        perturbed = backbone_features(fpn_model)
    finally:
        with torch.no_grad():
            output5.weight.copy_(saved)
    assert not torch.allclose(perturbed["p5"], features["p5"])
    torch.testing.assert_close(perturbed["p6"], features["p6"])


def test_fpn_anchors_3_3_3_6_per_position_with_the_papers_areas(fpn_model):
    rpn = fpn_model.proposal_generator
    assert rpn.in_features == ["p2", "p3", "p5", "p6"]
    all_features = backbone_features(fpn_model)
    features = [all_features[f] for f in rpn.in_features]
    expected_sizes = [(32,), (64,), (128,), (256, 512)]
    for anchors, feature, sizes in zip(rpn.anchor_generator(features), features, expected_sizes):
        per_position, shapes = anchor_shapes(anchors, feature)
        assert per_position == 3 * len(sizes)
        assert shapes == sorted((s * s, r) for s in sizes for r in RATIOS)
    objectness, deltas = rpn.rpn_head(features)
    for logits, delta, feature, count in zip(objectness, deltas, features, [3, 3, 3, 6]):
        assert logits.shape == (1, count) + feature.shape[-2:]
        assert delta.shape == (1, 4 * count) + feature.shape[-2:]


def test_rpn_predictor_channel_i_means_the_same_stride_relative_anchor_on_every_level(fpn_model):
    """One head for all levels (as in FPN): level l returns the first A_l channels of the shared
    predictors, and anchor i (i < 3) has the same shape relative to the stride on every level."""
    rpn = fpn_model.proposal_generator
    head = rpn.rpn_head
    all_features = backbone_features(fpn_model)
    features = [all_features[f] for f in rpn.in_features]
    with torch.no_grad():
        objectness, deltas = head(features)
        for feature, logits, delta, count in zip(features, objectness, deltas, [3, 3, 3, 6]):
            hidden = F.relu(F.conv2d(feature, head.conv.weight, head.conv.bias, padding=1))
            cls, reg = head.objectness_logits, head.anchor_deltas
            # float32 convolutions of large random-network activations: CPU kernels sum in
            # different orders (1e-3 relative on some machines); a wrong channel slice is O(1) off
            for got, expected in (
                (logits, F.conv2d(hidden, cls.weight[:count], cls.bias[:count])),
                (delta, F.conv2d(hidden, reg.weight[:4 * count], reg.bias[:4 * count])),
            ):
                torch.testing.assert_close(got, expected, rtol=2e-3,
                                           atol=2e-3 * float(expected.abs().max()))
    relative_shapes = []
    for anchors, feature, stride in zip(rpn.anchor_generator(features), features, [4, 8, 16, 32]):
        # anchors are laid out (position, anchor) as the RPN flattens its predictions
        cell = anchors.tensor.view(feature.shape[-2] * feature.shape[-1], -1, 4)[0]
        relative_shapes.append(((cell[:, 2:] - cell[:, :2]) / stride)[:3])
    for shapes in relative_shapes[1:]:
        torch.testing.assert_close(shapes, relative_shapes[0])


def test_fpn_roi_pooler_uses_p2_p3_p5_by_box_size(fpn_model):
    """FPN eq. 1, k = floor(4 + log2(sqrt(wh) / 224)), level k having stride 2^k, clamped to the
    levels present (strides 4, 8, 16): the pooler must read the level of that stride."""
    assert fpn_model.roi_heads.box_in_features == ["p2", "p3", "p5"]
    pooler = fpn_model.roi_heads.box_pooler
    side = 1024
    strides = [4, 8, 16]
    # each level filled with its own stride, so a pooled value names the level it was read from
    features = [torch.full((1, 1, side // s, side // s), float(s)) for s in strides]
    sizes = [20.0, 56.0, 112.0, 224.0, 300.0, 448.0, 900.0]
    boxes = torch.tensor([[10.0, 10.0, 10.0 + s, 10.0 + s] for s in sizes])
    pooled = pooler(features, [Boxes(boxes)])
    read_stride = pooled.flatten(1).mean(dim=1).tolist()
    expected = [2 ** min(max(math.floor(4 + math.log2(s / 224)), 2), 4) for s in sizes]
    assert read_stride == pytest.approx(expected)


@pytest.mark.parametrize("arch", ["c5", "fpn"])
def test_proposals_under_2px_are_dropped(models, arch):
    rpn = models[arch].proposal_generator
    assert rpn.min_box_size == 2
    # paper: "eliminated if their shorter sizes are less than 2 pixels"; far apart, so NMS keeps all
    boxes = torch.tensor([[[10.0, 10.0, 11.5, 40.0],   # 1.5 px wide: dropped
                           [50.0, 10.0, 53.0, 40.0],   # 3 px wide: kept
                           [80.0, 80.0, 120.0, 81.5],  # 1.5 px tall: dropped
                           [80.0, 10.0, 120.0, 13.0]]])  # 3 px tall: kept
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    (result,) = find_top_rpn_proposals([boxes], [logits], [(HEIGHT, WIDTH)], rpn.nms_thresh,
                                       pre_nms_topk=10, post_nms_topk=10,
                                       min_box_size=rpn.min_box_size, training=False)
    torch.testing.assert_close(result.proposal_boxes.tensor, boxes[0, [1, 3]])


def load_detectron2_checkpoint(d2_config, pgdet_config, tmp_path, caplog):
    """Save a detectron2 model-zoo model's weights, load them into a pgdet model.

    Returns (saved state, pgdet state before loading, after loading, the checkpointer's log).
    """
    d2_cfg = get_cfg()
    d2_cfg.merge_from_file(os.path.join(D2_CONFIGS, "COCO-Detection", d2_config))
    d2_cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(1)
    DetectionCheckpointer(build_model(d2_cfg), save_dir=str(tmp_path)).save("detectron2_model")
    saved = torch.load(tmp_path / "detectron2_model.pth", weights_only=False)["model"]

    model = build(pgdet_config, "MODEL.RESNETS.DEPTH", 50)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level("INFO"):
        DetectionCheckpointer(model).load(str(tmp_path / "detectron2_model.pth"))
    return saved, before, model.state_dict(), caplog.text


def assert_loaded_exactly(saved, before, after, loaded_prefixes):
    """Keys under `loaded_prefixes` hold the checkpoint's values; all others kept their init."""
    for key, value in after.items():
        if key.startswith(loaded_prefixes):
            assert torch.equal(value, saved[key]), f"{key} was not loaded"
        else:
            assert torch.equal(value, before[key]), f"{key} was overwritten"
            assert key not in saved or saved[key].shape != value.shape, f"{key} could have loaded"


def test_detectron2_dc5_checkpoint_fills_the_shared_layers(tmp_path, caplog):
    """detectron2's DC5 Faster R-CNN is the same dilated ResNet with an RPN and 2fc head on res5."""
    saved, before, after, log = load_detectron2_checkpoint(
        "faster_rcnn_R_50_DC5_3x.yaml", "frcnn_R101.yaml", tmp_path, caplog)
    assert_loaded_exactly(saved, before, after, (
        "backbone.",  # the whole ResNet, dilated res5 included
        "roi_heads.box_head.fc2.",  # 1024 -> 1024 in both heads
        "roi_heads.box_predictor.",  # 1024-d input, 81 classes in both
        # fvcore loads tensor by tensor: the biases match in shape although the weights do not
        "roi_heads.box_head.fc1.bias",
        "proposal_generator.rpn_head.objectness_logits.bias",  # 15 anchors in both
        "proposal_generator.rpn_head.anchor_deltas.bias",
    ))
    # new or reshaped: the strided conv, fc1 (7x7x256 inputs, not 7x7x2048), the 512-d RPN conv
    for key in ("roi_heads.box_head.conv", "roi_heads.box_head.fc1", "proposal_generator.rpn_head"):
        assert key in log


def test_detectron2_fpn_checkpoint_fills_the_shared_layers(tmp_path, caplog):
    """detectron2's FPN has C5's lateral/output convs and the 7x7x256 -> 2fc head too."""
    saved, before, after, log = load_detectron2_checkpoint(
        "faster_rcnn_R_50_FPN_3x.yaml", "frcnn_R101_FPN.yaml", tmp_path, caplog)
    assert_loaded_exactly(saved, before, after, (
        "backbone.bottom_up.",
        "backbone.fpn_lateral2.", "backbone.fpn_output2.",
        "backbone.fpn_lateral3.", "backbone.fpn_output3.",
        "backbone.fpn_lateral5.", "backbone.fpn_output5.",
        "roi_heads.box_head.fc1.", "roi_heads.box_head.fc2.",
        "roi_heads.box_predictor.",
    ))
    for key in ("backbone.top_block.p6", "roi_heads.box_head.conv", "proposal_generator.rpn_head",
                "backbone.fpn_lateral4"):  # the last: in the checkpoint, not in the model
        assert key in log
