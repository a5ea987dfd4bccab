"""Cascade R-CNN with the policy gradient (PGCascadeROIHeads).

Oracles: detectron2's own CascadeROIHeads, built from the same config with the same weights, on
the same features, proposals and ground truth with the same seed for the RoI sampling (its
training losses; its test-time inference for D); and the inputs' geometry for which RoIs are
appended ground truth and which reach the later stages.
"""
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from test_coco_json import write_tiny_coco
from test_mask_rcnn import (
    RANDOM_WEIGHTS, _losses_and_mask_grads, _roi_heads_inputs, pg_and_detectron2_heads,
)

from pgdet.data import register_datasets_from_cfg
from pgdet.engine import Trainer, build_cfg
from pgdet.engine.trainer import check_pg_model
from pgdet.modeling.pg import policy_gradient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASCADE_CONFIG = os.path.join(REPO, "pgdet", "configs", "model_zoo", "pg_cascade_mask_rcnn_R_50_FPN_3x.yaml")
SHAPES = {f"p{level}": ShapeSpec(channels=256, stride=2 ** level) for level in (2, 3, 4, 5)}
STAGES = (0, 1, 2)
# every proposal is sampled; D has no masks, and the mask head would be run on all of D
ALL_ROIS = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "512", "MODEL.MASK_ON", "False"]
NUM_EMPTY = 3  # proposals per image made empty (zero width)


def _cascade_heads(pg_enabled, cascade_stages="last", opts=()):
    """PGCascadeROIHeads of the cascade config and detectron2's CascadeROIHeads with the same
    weights, in training mode."""
    return pg_and_detectron2_heads(
        CASCADE_CONFIG, ["MODEL.PG.ENABLED", str(pg_enabled), "MODEL.PG.CASCADE_STAGES",
                         cascade_stages, "SEED", "0", *opts], "CascadeROIHeads")


def _inputs_with_empty_proposals():
    """`_roi_heads_inputs` with the last NUM_EMPTY proposals of each image of zero width: their
    regressed boxes stay empty, so detectron2's training drops them after stage 0."""
    features, proposals, targets = _roi_heads_inputs()
    for p in proposals:
        boxes = p.proposal_boxes.tensor
        boxes[-NUM_EMPTY:, 2] = boxes[-NUM_EMPTY:, 0]
    return features, proposals, targets


def _spy_on_baseline_detections(monkeypatch):
    """Record each call of the PG loss's D: (the stage's RoIs, D per image, D's RoI indices)."""
    calls = []
    original = policy_gradient._baseline_detections

    def recording(probs, boxes, proposals, *rest):  # rest: settings, the predictor's thresholds
        baseline, rois = original(probs, boxes, proposals, *rest)
        calls.append((proposals, baseline, rois))
        return baseline, rois

    monkeypatch.setattr(policy_gradient, "_baseline_detections", recording)
    return calls


def _train_forward(heads, inputs):
    """One training forward with the RoI sampling seeded: the sampled stage-0 RoIs."""
    features, proposals, targets = inputs
    torch.manual_seed(0)
    with EventStorage():
        sampled, _ = heads(None, features, proposals, targets)
    return sampled


def _is_appended_gt(rois: Instances, targets: Instances) -> torch.Tensor:
    """[R] bool: the RoI is exactly a ground-truth box (the inputs' proposals are jittered)."""
    same = rois.proposal_boxes.tensor[:, None] == targets.gt_boxes.tensor[None]
    return same.all(dim=2).any(dim=1)


def test_without_pg_box_and_mask_losses_are_detectron2s():
    pg_heads, reference = _cascade_heads(pg_enabled=False)
    losses, mask_grads, _ = _losses_and_mask_grads(pg_heads)
    expected, expected_grads, _ = _losses_and_mask_grads(reference)
    assert set(losses) == set(expected) == {
        *(f"{loss}_stage{k}" for loss in ("loss_cls", "loss_box_reg") for k in STAGES),
        "loss_mask"}
    assert all(torch.equal(losses[k], expected[k]) for k in expected), (losses, expected)
    assert all(torch.equal(a, b) for a, b in zip(mask_grads, expected_grads))


@pytest.mark.parametrize("cascade_stages, pg_stages", [("last", {2}), ("all", {0, 1, 2})])
def test_with_pg_only_the_chosen_stages_classifier_losses_change(cascade_stages, pg_stages):
    pg_heads, reference = _cascade_heads(pg_enabled=True, cascade_stages=cascade_stages)
    losses, mask_grads, logged = _losses_and_mask_grads(pg_heads)
    expected, expected_grads, _ = _losses_and_mask_grads(reference)
    assert {k for k in expected if not torch.equal(losses[k], expected[k])} == {
        f"loss_cls_stage{k}" for k in pg_stages}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.equal(a, b) for a, b in zip(mask_grads, expected_grads))
    # detectron2 logs each stage's losses under stage<k>/
    assert {name.split("/")[0] for name in logged if "/pg/" in name} == {
        f"stage{k}" for k in pg_stages}
    assert {f"stage2/pg/{s}" for s in ("baseline_reward", "mean_weight", "reward_time")} <= logged


@pytest.mark.parametrize("nms_thresh", ["0.5", "1.0"])  # detectron2's default; no NMS
def test_d_is_the_cascades_test_time_inference_on_the_same_rois(monkeypatch, nms_thresh):
    """D of the last stage = detectron2's CascadeROIHeads in eval mode (stage-averaged scores
    on the last stage's boxes, score threshold, NMS, cap) on the sampled stage-0 RoIs that exist
    at test time: not the appended ground truth, not the ones training drops as empty."""
    # no cap binding, so that every RoI that NMS keeps is compared
    uncapped = ["TEST.DETECTIONS_PER_IMAGE", "1000", "MODEL.PG.MAX_DETECTIONS", "1000"]
    pg_heads, reference = _cascade_heads(pg_enabled=True, opts=[
        *ALL_ROIS, *uncapped, "MODEL.ROI_HEADS.NMS_THRESH_TEST", nms_thresh])
    calls = _spy_on_baseline_detections(monkeypatch)
    inputs = _inputs_with_empty_proposals()
    features, _, targets = inputs
    sampled = _train_forward(pg_heads, inputs)
    ((_, baseline, _),) = calls  # "last": one PG loss
    reference.eval()
    with torch.no_grad():
        expected, _ = reference(None, features, [
            Instances(p.image_size, proposal_boxes=p.proposal_boxes[keep])
            for p, t in zip(sampled, targets)
            for keep in [~_is_appended_gt(p, t) & p.proposal_boxes.nonempty()]])
    for got, want in zip(baseline, expected):
        assert 0 < len(want) < 1000
        assert torch.equal(got.pred_classes, want.pred_classes)
        torch.testing.assert_close(got.pred_boxes.tensor, want.pred_boxes.tensor)
        torch.testing.assert_close(got.scores, want.scores)


def test_per_image_fields_survive_every_stage(monkeypatch):
    """With PG on every stage, each stage's RoIs carry the image's full ground truth and mark
    the RoIs refined from appended ground truth, and D leaves them out at every stage."""
    # without NMS every RoI whose score passes the threshold would be in D
    pg_heads, _ = _cascade_heads(pg_enabled=True, cascade_stages="all", opts=[
        *ALL_ROIS, "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0"])
    calls = _spy_on_baseline_detections(monkeypatch)
    inputs = _inputs_with_empty_proposals()
    targets = inputs[2]
    sampled = _train_forward(pg_heads, inputs)
    assert len(calls) == len(STAGES)
    for stage, (rois, _, baseline_rois) in enumerate(calls):
        for image, (p, first, t, d_rois) in enumerate(zip(rois, sampled, targets, baseline_rois)):
            survives = first.proposal_boxes.nonempty() if stage else torch.ones(len(first), dtype=bool)
            assert stage == 0 or int((~survives).sum()) == NUM_EMPTY
            from_gt = _is_appended_gt(first, t)
            assert int(from_gt.sum()) == len(t)
            assert p._pg_targets is t
            assert torch.equal(p.pg_from_gt, from_gt[survives])
            # the same RoIs in the same order, refined stage by stage (random weights: a little)
            torch.testing.assert_close(p.proposal_boxes.tensor,
                                       first.proposal_boxes.tensor[survives], atol=2.0, rtol=0)
            assert len(d_rois) > 0 and not p.pg_from_gt[d_rois].any(), (stage, image)
            # ... which the ground-truth RoIs' scores would pass
            assert (p.pg_scores[p.pg_from_gt, :-1] > 0.05).all(), (stage, image)


def test_two_pg_training_iterations_of_the_cascade_config(tmp_path):
    """The model-zoo Cascade Mask R-CNN PG config, random weights, 128-px images of a COCO
    export with polygons, through the Trainer. Trainable BN and a small learning rate: a random
    ResNet diverges at once otherwise, and its regressed boxes all clip to empty, so that no RoI
    would reach the last stage."""
    write_tiny_coco(str(tmp_path))
    cfg = build_cfg(CASCADE_CONFIG, [
        *RANDOM_WEIGHTS, "MODEL.RESNETS.NORM", "BN", "SOLVER.BASE_LR", "0.00001",
        "DATASETS.COCO_JSONS",
        f"['cascade_test_train:{tmp_path / 'train.json'}:{tmp_path / 'images'}']",
        "DATASETS.TRAIN", "('cascade_test_train',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "SEED", "0", "OUTPUT_DIR", str(tmp_path / "out")])
    register_datasets_from_cfg(cfg)
    torch.manual_seed(0)  # the random weights
    trainer = Trainer(cfg)
    with EventStorage(0) as storage:
        for trainer.iter in range(2):  # the training step alone: no checkpoint
            trainer.run_step()
            storage.step()
    losses = [f"{loss}_stage{k}" for loss in ("loss_cls", "loss_box_reg") for k in STAGES]
    for key in (*losses, "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        values = [v for v, _ in storage.history(key).values()]
        assert len(values) == 2 and all(torch.isfinite(torch.tensor(values))), (key, values)
    # mean_weight is logged when the last stage has RoIs
    for key in ("stage2/pg/baseline_reward", "stage2/pg/mean_weight", "stage2/pg/reward_time"):
        assert len(storage.history(key).values()) == 2, key
    assert not any(name.startswith(("stage0/pg/", "stage1/pg/")) for name in storage.histories())


@pytest.mark.parametrize("opts, key", [
    (["MODEL.PG.CASCADE_STAGES", "first"], "MODEL.PG.CASCADE_STAGES"),
    (["MODEL.SOFT_NMS.ENABLED", "True"], "MODEL.SOFT_NMS.ENABLED"),
])
def test_invalid_cascade_options_fail_at_build_time(opts, key):
    cfg = build_cfg(CASCADE_CONFIG, [*RANDOM_WEIGHTS, *opts])
    with pytest.raises(ValueError) as e:
        build_roi_heads(cfg, SHAPES)
    assert key in str(e.value)


def test_pg_with_detectron2s_cascade_heads_names_the_pg_cascade():
    cfg = build_cfg(CASCADE_CONFIG, [*RANDOM_WEIGHTS, "MODEL.ROI_HEADS.NAME", "CascadeROIHeads"])
    model = SimpleNamespace(roi_heads=build_roi_heads(cfg, SHAPES))
    with pytest.raises(ValueError, match="PGCascadeROIHeads"):
        check_pg_model(cfg, model)
    cfg.MODEL.ROI_HEADS.NAME = "PGCascadeROIHeads"
    check_pg_model(cfg, SimpleNamespace(roi_heads=build_roi_heads(cfg, SHAPES)))
