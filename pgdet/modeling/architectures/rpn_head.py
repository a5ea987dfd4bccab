"""An RPN head for pyramids whose levels carry different numbers of anchors (Rao et al. 2018, §4.1).

The paper's FPN puts anchors of area {32²}, {64²}, {128²} on P2, P3, P5 and {256², 512²} on P6,
each with 3 aspect ratios: 3, 3, 3 and 6 anchors per position. detectron2's
``DefaultAnchorGenerator`` already produces that (``ANCHOR_GENERATOR.SIZES
[[32], [64], [128], [256, 512]]``) but ``StandardRPNHead`` insists on one count for all levels.
"""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.anchor_generator import build_anchor_generator
from detectron2.modeling.proposal_generator.rpn import RPN_HEAD_REGISTRY, StandardRPNHead


@RPN_HEAD_REGISTRY.register()
class PerLevelAnchorRPNHead(StandardRPNHead):
    """detectron2's RPN head, shared across levels, predicting the *first* A_l anchors of level l.

    The 3x3 conv and the two 1x1 predictors are shared by all levels, as in detectron2's FPN RPN
    (and the FPN paper), and are sized for the largest count A = max_l A_l. On level l only the
    first A_l objectness channels and the first A_l · box_dim delta channels are returned.

    Why sharing and slicing rather than one predictor per level: the anchor generator lists a
    level's anchors size-major, so in the paper's layout channel i means the same anchor shape
    *relative to the stride* on every level (sizes 8x the stride — 32/4, 64/8, 128/16, 256/32 —
    times ratio i), exactly what detectron2's shared FPN head relies on. Only P6's extra 512²
    anchors (16x the stride) get channels of their own. Per-level predictors would split the
    training signal of identical relative shapes four ways for no gain. The unused channels on
    the other levels are simply not returned, so they receive no loss and no gradient.

    With one level it is ``StandardRPNHead`` itself, with the same parameter names.
    """

    @configurable
    def __init__(self, *, in_channels: int, num_anchors_per_level: List[int], box_dim: int = 4,
                 conv_dims: List[int] = (-1,)):
        """
        Args:
            in_channels: channels of every input level (must be equal, the head is shared).
            num_anchors_per_level: A_l, anchors per spatial position on each level, in the
                order the levels are passed to :meth:`forward`.
            box_dim: box parameters per anchor (4 for axis-aligned boxes).
            conv_dims: output channels of the shared 3x3 conv(s), as in ``StandardRPNHead``.
        """
        super().__init__(in_channels=in_channels, num_anchors=max(num_anchors_per_level),
                         box_dim=box_dim, conv_dims=conv_dims)
        self.num_anchors_per_level = list(num_anchors_per_level)
        self.box_dim = box_dim

    @classmethod
    def from_config(cls, cfg, input_shape):
        channels = {shape.channels for shape in input_shape}
        assert len(channels) == 1, f"every RPN input level must have the same channels: {channels}"
        # the head must predict for exactly the anchors the RPN's own generator will produce
        anchor_generator = build_anchor_generator(cfg, input_shape)
        return {
            "in_channels": channels.pop(),
            "num_anchors_per_level": anchor_generator.num_anchors,
            "box_dim": anchor_generator.box_dim,
            "conv_dims": cfg.MODEL.RPN.CONV_DIMS,
        }

    def forward(self, features: List[torch.Tensor]):
        """
        Args:
            features: L maps, level l of shape (N, C, H_l, W_l).

        Returns:
            list[Tensor]: L objectness logit maps, level l of shape (N, A_l, H_l, W_l).
            list[Tensor]: L anchor-delta maps, level l of shape (N, A_l * box_dim, H_l, W_l).
        """
        assert len(features) == len(self.num_anchors_per_level), (
            f"{len(features)} feature levels for {len(self.num_anchors_per_level)} anchor counts"
        )
        objectness, deltas = super().forward(features)
        return (
            [logits[:, :count] for logits, count in zip(objectness, self.num_anchors_per_level)],
            [d[:, : count * self.box_dim] for d, count in zip(deltas, self.num_anchors_per_level)],
        )
