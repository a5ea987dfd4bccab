"""PG training steps on real model code with awkward batches (no NaN, no crash)."""
import os

import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from pgdet.engine import build_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_batch_with_an_unannotated_image_and_a_single_box():
    cfg = build_cfg(os.path.join(REPO, "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml"),
                    ["MODEL.PG.ENABLED", "True", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"])
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
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total), losses
            total.backward()
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.01 * p.grad
                        p.grad = None
            storage.step()
        # the annotated image yields a reward every step; the other contributes none and no NaN
        assert storage.history("pg/baseline_reward").values()[-1][0] >= 0.0
        assert len(storage.history("pg/baseline_reward").values()) == 2
