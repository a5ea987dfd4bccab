"""ROI heads of RS-R-CNN (Oksuz et al., ICCV 2021): Rank & Sort loss, sampling-free.

A ranking loss needs no foreground/background sampling (it is normalised by the positives, not
by the RoI count, and ranks every negative against them), so with ``MODEL.RS_LOSS.SAMPLING_FREE``
every proposal of the RPN (plus the appended ground truth) is a training RoI, as in the paper:
``label_and_sample_proposals`` is given an unbounded batch size and a positive fraction of 1, so
detectron2's sampler keeps everything. The box predictor is :class:`RSFastRCNNOutputLayers`.
With ``MODEL.RS_LOSS.ENABLED False`` these heads are PGROIHeads, i.e. StandardROIHeads.
The RPN keeps detectron2's loss (the paper also trains it with RS loss; see
docs/method-and-options.md, "Rank & Sort loss").
"""
import sys

from detectron2.modeling import ROI_HEADS_REGISTRY

from ..pg.pg_roi_heads import PGROIHeads
from .rs_output_layers import RSFastRCNNOutputLayers


@ROI_HEADS_REGISTRY.register()
class RSROIHeads(PGROIHeads):
    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.RS_LOSS.ENABLED and cfg.MODEL.RS_LOSS.SAMPLING_FREE:
            ret.update(batch_size_per_image=sys.maxsize, positive_fraction=1.0)
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = RSFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret
