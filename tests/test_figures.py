"""Figure 3's detections are the ones detectron2's evaluation path computes for the same image."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

from pgdet.engine import build_cfg
from pgdet.engine.figures import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml")


def test_figure_predictions_equal_the_evaluation_paths(tmp_path):
    """Same weights, same image: `predict` (DefaultPredictor) against the model run on what
    detectron2's test-time DatasetMapper makes of the record (the path COCOEvaluator scores). An
    RGB model fed BGR (or the reverse) gives other scores."""
    cfg = build_cfg(DEMO_CONFIG, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = weights
    record = DatasetCatalog.get("pgdet_demo_val")[0]

    oracle = build_model(cfg)
    DetectionCheckpointer(oracle).load(weights)
    oracle.eval()
    with torch.no_grad():
        expected = oracle([DatasetMapper(cfg, is_train=False)(dict(record))])[0]["instances"]
    drawn = predict(cfg, [record], score_thresh=-1.0)[0]
    assert len(expected) > 0
    torch.testing.assert_close(drawn.scores, expected.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(drawn.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2,
                               rtol=0)
    assert torch.equal(drawn.pred_classes, expected.pred_classes)
