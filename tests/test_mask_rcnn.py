"""Mask R-CNN with the policy gradient: PGROIHeads is a StandardROIHeads, so the mask head
trains exactly as in detectron2 and the policy gradient changes only the box classifier's loss.

Oracle: detectron2's own StandardROIHeads, built from the same config with the same weights,
on the same features, proposals and ground truth, with the same seed for the RoI sampling.
"""
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from detectron2.structures import Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage
from test_coco_json import write_tiny_coco

from pgdet.data import register_datasets_from_cfg
from pgdet.engine import Trainer, build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MASK_CONFIG = os.path.join(REPO, "pgdet", "configs", "model_zoo", "pg_mask_rcnn_R_50_FPN_3x.yaml")
SIZE = 128
RANDOM_WEIGHTS = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                  "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]  # of 60 + GT: a real draw


def _roi_heads_inputs():
    """FPN features of two 128x128 images, 60 proposals each (some on the objects), and ground
    truth with polygon masks; a fresh copy per call (the heads must not share inputs)."""
    gen = torch.Generator().manual_seed(3)
    features = {f"p{level}": torch.randn(2, 256, SIZE >> level, SIZE >> level, generator=gen)
                for level in (2, 3, 4, 5)}
    gt = [torch.tensor([[10.0, 12, 60, 70], [70, 20, 120, 100]]),
          torch.tensor([[30.0, 30, 90, 80]])]
    targets, proposals = [], []
    for boxes in gt:
        polygons = [[[x0, y0, x1, y0, (x0 + x1) / 2, y1]] for x0, y0, x1, y1 in boxes.tolist()]
        targets.append(Instances((SIZE, SIZE), gt_boxes=Boxes(boxes),
                                 gt_classes=torch.arange(len(boxes)) % 3,
                                 gt_masks=PolygonMasks(polygons)))
        corners = torch.rand(60, 2, generator=gen) * (SIZE - 24)
        random = torch.cat([corners, corners + 8 + torch.rand(60, 2, generator=gen) * 40], 1)
        jittered = boxes.repeat(5, 1) + torch.randn(5 * len(boxes), 4, generator=gen) * 4
        proposals.append(Instances((SIZE, SIZE), proposal_boxes=Boxes(
            torch.cat([jittered, random])[:60].clamp(0, SIZE)),
            objectness_logits=torch.randn(60, generator=gen)))
    return features, proposals, targets


def _losses_and_mask_grads(heads, seed=0):
    """The heads' training losses on `_roi_heads_inputs` with the RoI sampling seeded, the
    gradients their sum gives the mask head, and the names of the scalars logged."""
    features, proposals, targets = _roi_heads_inputs()
    heads.zero_grad()
    torch.manual_seed(seed)
    with EventStorage() as storage:
        _, losses = heads(None, features, proposals, targets)
    sum(losses.values()).backward()
    return losses, [p.grad.clone() for p in heads.mask_head.parameters()], set(storage.latest())


FPN_SHAPES = {f"p{level}": ShapeSpec(channels=256, stride=2 ** level) for level in (2, 3, 4, 5)}


def pg_and_detectron2_heads(config, opts, reference_name):
    """pgdet's ROI heads of `config` + `opts` (random weights) and detectron2's `reference_name`
    heads with the same weights, both in training mode."""
    cfg = build_cfg(config, [*RANDOM_WEIGHTS, *opts])
    torch.manual_seed(1)
    pg_heads = build_roi_heads(cfg, FPN_SHAPES).train()
    cfg.MODEL.ROI_HEADS.NAME = reference_name
    reference = build_roi_heads(cfg, FPN_SHAPES).train()
    assert type(reference).__name__ == reference_name
    pg_heads.load_state_dict(reference.state_dict())
    return pg_heads, reference


def _pg_and_detectron2_heads(pg_enabled):
    return pg_and_detectron2_heads(MASK_CONFIG, ["MODEL.PG.ENABLED", str(pg_enabled)],
                                   "StandardROIHeads")


def test_without_pg_box_and_mask_losses_are_detectron2s():
    pg_heads, reference = _pg_and_detectron2_heads(pg_enabled=False)
    losses, mask_grads, _ = _losses_and_mask_grads(pg_heads)
    expected, expected_grads, _ = _losses_and_mask_grads(reference)
    assert set(losses) == set(expected) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.equal(losses[k], expected[k]) for k in expected), (losses, expected)
    assert all(torch.equal(a, b) for a, b in zip(mask_grads, expected_grads))
    other_draw, _, _ = _losses_and_mask_grads(reference, seed=1)  # the seed decides the RoIs
    assert not torch.equal(other_draw["loss_mask"], expected["loss_mask"])


def test_with_pg_only_the_classifier_loss_changes():
    pg_heads, reference = _pg_and_detectron2_heads(pg_enabled=True)
    losses, mask_grads, logged = _losses_and_mask_grads(pg_heads)
    expected, expected_grads, _ = _losses_and_mask_grads(reference)
    assert {"pg/baseline_reward", "pg/mean_weight"} <= logged
    assert torch.equal(losses["loss_mask"], expected["loss_mask"])
    assert torch.equal(losses["loss_box_reg"], expected["loss_box_reg"])
    assert torch.isfinite(losses["loss_cls"])
    assert all(torch.equal(a, b) for a, b in zip(mask_grads, expected_grads))
    assert any(g.abs().sum() > 0 for g in mask_grads)


def test_two_pg_training_iterations_of_the_mask_rcnn_config(tmp_path):
    """The model-zoo Mask R-CNN PG config, random weights, on 128-px images of a COCO export
    whose objects have polygons, registered through DATASETS.COCO_JSONS."""
    write_tiny_coco(str(tmp_path))
    cfg = build_cfg(MASK_CONFIG, [
        *RANDOM_WEIGHTS, "DATASETS.COCO_JSONS",
        f"['mask_test_train:{tmp_path / 'train.json'}:{tmp_path / 'images'}']",
        "DATASETS.TRAIN", "('mask_test_train',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "SEED", "0", "OUTPUT_DIR", str(tmp_path / "out")])
    register_datasets_from_cfg(cfg)
    trainer = Trainer(cfg)
    with EventStorage(0) as storage:
        for trainer.iter in range(2):  # the training step alone: no checkpoint of 170 MB
            trainer.run_step()
            storage.step()
    assert MetadataCatalog.get("mask_test_train").thing_dataset_id_to_contiguous_id == {
        3: 0, 7: 1, 12: 2}
    for key in ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        values = [v for v, _ in storage.history(key).values()]
        assert len(values) == 2 and all(torch.isfinite(torch.tensor(values))), (key, values)
    for key in ("pg/baseline_reward", "pg/mean_weight", "pg/reward_time"):
        assert len(storage.history(key).values()) == 2, key

