"""pgdet's Cascade R-CNN ROI heads: detectron2's CascadeROIHeads with pgdet's box predictor.

A cascade's detections D are not one stage's: at test time detectron2 averages the softmax
scores of all stages and decodes the *last* stage's class-agnostic boxes, where stage k scores
the boxes that stage k-1 regressed, RoI i of every stage being the refinement of the same RoI i
of stage 0. So the PG loss of a stage needs, on each of its RoIs, more than that stage's logits:

- ``pg_scores`` [R_k, K+1]: the mean of the softmax scores of stages 0..k along the RoI's chain.
  At the last stage these are the test-time scores, so the D of the PG loss is detectron2's
  cascade inference on the RoIs (score threshold, NMS, detection cap as at test time), and the
  candidates' p_b, which the actions are drawn with, are the cascade's scores too. (So the
  ``reinforce`` advantage p_b Δ_b is no longer the exact gradient: through the mean of n
  stages it would be p_b^(k) Δ_b / n, with p_b^(k) the trained stage's own probability.)
- ``pg_from_gt`` [R_k] and ``_pg_targets``, as in :class:`PGROIHeads`.

Every stage builds new proposal objects from the previous stage's boxes (and in training drops
those clipped to an empty box), so these are carried from each stage to the next, indexed
like the RoIs that survive. ``MODEL.PG.CASCADE_STAGES`` chooses which stages' classifiers get
the PG loss (config.py says why the default is the last one only).

The class is a CascadeROIHeads first (its ``_init_box_head``, ``forward`` and ``_forward_box``
win) and a PGROIHeads second, for PGROIHeads' ``label_and_sample_proposals``, which marks stage
0's RoIs. It overrides ``_init_box_head`` (PG predictors), ``_run_stage`` (accumulate the
scores) and ``_create_proposals_from_boxes`` (carry the fields). With ``MODEL.PG.ENABLED False``
it computes exactly what CascadeROIHeads does, so checkpoints are interchangeable.
"""
import torch
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes
from detectron2.utils import comm

from ...config_error import ConfigError
from .pg_output_layers import SCORES_FIELD, PGFastRCNNOutputLayers
from .pg_roi_heads import PGROIHeads
from .policy_gradient import FROM_GT_FIELD

# Field of a stage's RoIs: the sum of the softmax scores of the stages so far [R_k, K+1], kept
# besides their mean so that the last stage's mean is computed as detectron2's inference does.
_SCORE_SUM_FIELD = "pg_score_sum"


def _nonempty_after_clip(boxes: torch.Tensor, image_size) -> torch.Tensor:
    """[R] bool: the predicted boxes [R, 4] that detectron2's training keeps as the next stage's
    proposals (``CascadeROIHeads._create_proposals_from_boxes``: clipped, then non-empty)."""
    clipped = Boxes(boxes.detach())
    clipped.clip(image_size)
    return clipped.nonempty()


@ROI_HEADS_REGISTRY.register()
class PGCascadeROIHeads(CascadeROIHeads, PGROIHeads):
    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.SOFT_NMS.ENABLED:
            raise ConfigError(
                "MODEL.SOFT_NMS.ENABLED is not supported by PGCascadeROIHeads: the cascade's "
                "inference runs detectron2's greedy NMS on the stage-averaged scores. Set "
                "MODEL.SOFT_NMS.ENABLED False."
            )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        last = len(ret["box_predictors"]) - 1
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        ret["box_predictors"] = [
            PGFastRCNNOutputLayers(
                cfg,
                head.output_shape,
                box2box_transform=predictor.box2box_transform,
                pg_enabled=cfg.MODEL.PG.ENABLED
                and (cfg.MODEL.PG.CASCADE_STAGES == "all" or stage == last),
                pg_seed=seed + stage,  # with "all", each stage draws its own actions
            )
            for stage, (head, predictor) in enumerate(zip(ret["box_heads"], ret["box_predictors"]))
        ]
        return ret

    def _run_stage(self, features, proposals, stage):
        predictions = super()._run_stage(features, proposals, stage)
        if self.training:
            with torch.no_grad():
                probs = self.box_predictor[stage].predict_probs(predictions, proposals)
            for image_proposals, image_probs in zip(proposals, probs):
                total = image_probs.detach()
                if stage > 0:
                    total = image_proposals.get(_SCORE_SUM_FIELD) + total
                image_proposals.set(_SCORE_SUM_FIELD, total)
                image_proposals.set(SCORES_FIELD, total * (1.0 / (stage + 1)))
            if stage + 1 < self.num_cascade_stages:
                # handed to _create_proposals_from_boxes, which builds the next stage's RoIs
                self._pg_previous_stage = proposals
        return predictions

    def _create_proposals_from_boxes(self, boxes, image_sizes):
        proposals = super()._create_proposals_from_boxes(boxes, image_sizes)
        if not self.training:
            return proposals
        previous = self._pg_previous_stage
        del self._pg_previous_stage
        for new, old, image_boxes in zip(proposals, previous, boxes):
            kept = _nonempty_after_clip(image_boxes, new.image_size)
            new.set(FROM_GT_FIELD, old.get(FROM_GT_FIELD)[kept])
            new.set(_SCORE_SUM_FIELD, old.get(_SCORE_SUM_FIELD)[kept])
            new._pg_targets = old._pg_targets
        return proposals
