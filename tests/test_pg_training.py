"""PG training steps on real model code with awkward batches (no NaN, no crash) and with
non-finite outputs (a clear stop)."""
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from pgdet.engine import Trainer, build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def finite_sgd_step(model, batch, storage, lr=0.01):
    """One training step by hand: the losses and every gradient finite, then plain SGD at `lr`
    and the storage stepped. Returns the losses."""
    losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
                p.grad = None
    storage.step()
    return losses


@pytest.mark.parametrize("options", [
    [],
    ["MODEL.PG.REWARD_ESTIMATOR", "swap", "MODEL.PG.KEPT_BOX_CREDIT", "True",
     "MODEL.PG.SUPPRESSOR_CREDIT", "True", "MODEL.PG.ADVANTAGE_NORM", "image_max"],
    ["MODEL.PG.REWARD_ESTIMATOR", "reinforce", "MODEL.PG.SAMPLE_NMS", "True"],
])
def test_batch_with_an_unannotated_image_and_a_single_box(options):
    """Random weights: D is often empty, which pgdet 0.2's swap estimator could not handle."""
    cfg = build_cfg(os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml"),
                    ["MODEL.PG.ENABLED", "True", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
                     *options])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    size = (160, 160)
    empty = Instances(size, gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.long))
    one = Instances(size, gt_boxes=Boxes(torch.tensor([[30.0, 40.0, 90.0, 110.0]])),
                    gt_classes=torch.tensor([2]))
    batch = [{"image": torch.rand(3, *size) * 255, "instances": inst, "height": 160, "width": 160}
             for inst in (empty, one)]
    with EventStorage() as storage:
        for _ in range(2):  # the second step runs on the weights the first one changed
            finite_sgd_step(model, batch, storage)
        # the annotated image yields a reward every step; the other contributes none and no NaN
        assert storage.history("pg/baseline_reward").values()[-1][0] >= 0.0
        assert len(storage.history("pg/baseline_reward").values()) == 2


def test_non_finite_logits_stop_training_naming_iteration_and_image_id(tmp_path):
    """A NaN logit in the last image of iteration 1's batch: training stops there and names that
    image's dataset id, not a silently zero PG weight."""
    cfg = build_cfg(os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml"), [
        "MODEL.PG.ENABLED", "True", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    predictor = trainer.model.roi_heads.box_predictor
    clean_forward = predictor.forward

    def poisoned_forward(features):
        scores, deltas = clean_forward(features)
        if trainer.iter == 1:  # RoIs are concatenated by image: the last row is the last one's
            scores = torch.cat([scores[:-1], torch.full_like(scores[-1:], float("nan"))])
        return scores, deltas

    predictor.forward = poisoned_forward
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    batch_ids = trainer._batches.last_image_ids
    assert len(batch_ids) == 2
    message = str(e.value)
    assert "iteration 1 " in message and "batch positions [1]" in message
    assert f"offending image ids: [{batch_ids[1]!r}]" in message
