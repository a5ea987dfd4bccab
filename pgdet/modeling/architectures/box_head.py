"""The paper's box head: one strided 3x3 conv, then two fc layers (Rao et al. 2018, §4.1).

The RoI features come from res5 (or an FPN level) pooled at 14x14 — denser than the usual 7x7,
which the paper finds helps large objects. A 3x3 stride-2 conv brings them to 7x7x256 before
fc 1024, fc 1024, each followed by ReLU, no dropout. On 2048-channel res5 features this head has
a small fraction of the parameters of a 2-fc MLP on the same input, whose first fc would see
14x14x2048 values.
"""
from typing import List

import fvcore.nn.weight_init as weight_init
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import ROI_BOX_HEAD_REGISTRY
from torch import nn


@ROI_BOX_HEAD_REGISTRY.register()
class StridedConvFCHead(nn.Sequential):
    """3x3 conv (stride s) + ReLU → flatten → fc + ReLU, ... : (R, C, H, W) → (R, fc_dims[-1]).

    An ``nn.Sequential`` like detectron2's ``FastRCNNConvFCHead``, whose conv layers keep the
    spatial size and so cannot downsample. The fc layers carry its names (``fc1``, ``fc2``): on a
    256-channel FPN level detectron2's FPN checkpoints fill them, as 7x7x256 feeds fc1 there too.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, conv_dim: int, conv_stride: int,
                 fc_dims: List[int]):
        """
        Args:
            input_shape: the pooled RoI features, channels x height x width (e.g. 2048 x 14 x 14).
            conv_dim: output channels of the 3x3 conv (paper: 256).
            conv_stride: its stride (paper: 2, so 14x14 → 7x7).
            fc_dims: output sizes of the fc layers (paper: [1024, 1024]).
        """
        super().__init__()
        self.add_module("conv", Conv2d(input_shape.channels, conv_dim, kernel_size=3,
                                       stride=conv_stride, padding=1, activation=nn.ReLU()))
        weight_init.c2_msra_fill(self.conv)
        # a 3x3 conv with padding 1 maps size h to ceil(h / stride)
        height = -(-input_shape.height // conv_stride)
        width = -(-input_shape.width // conv_stride)
        self.add_module("flatten", nn.Flatten())
        self._output_size = conv_dim * height * width
        for k, fc_dim in enumerate(fc_dims, start=1):
            fc = nn.Linear(self._output_size, fc_dim)
            weight_init.c2_xavier_fill(fc)
            self.add_module(f"fc{k}", fc)
            self.add_module(f"fc_relu{k}", nn.ReLU())
            self._output_size = fc_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        head_cfg = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "conv_dim": head_cfg.CONV_FC_CONV_DIM,
            "conv_stride": head_cfg.CONV_FC_CONV_STRIDE,
            "fc_dims": [head_cfg.FC_DIM] * head_cfg.NUM_FC,
        }

    @property
    def output_shape(self):
        """The per-RoI feature vector the box predictor receives."""
        return ShapeSpec(channels=self._output_size)
