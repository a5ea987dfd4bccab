"""pgdet-predict on demo images with a randomly initialised demo detector saved as a checkpoint.

Oracle: detectron2's DefaultPredictor run here on the same weights, config and image (read with
PIL, not detectron2), with the score threshold set by hand; category ids from the demo dataset's
own COCO json, by class name. A random Faster R-CNN scores every class near 1 / (K + 1) = 0.2,
so a threshold of 0.1 leaves many detections to compare.
"""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from PIL import Image

from pgdet.data import DEMO_CLASS_NAMES
from pgdet.engine import build_cfg
from pgdet.tools import predict

REPO = Path(__file__).resolve().parents[1]
CONFIG = "demo/frcnn_MobileNetV2_FPN_demo.yaml"  # by name, as a user may give it
THRESH = 0.1


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cfg = build_cfg(CONFIG)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("random")
    weights = str(root / "random.pth")
    val = [d["file_name"] for d in DatasetCatalog.get("pgdet_demo_val")[:3]]
    folder, loose = root / "folder", root / "loose"
    folder.mkdir()
    loose.mkdir()
    inputs = [shutil.copy(val[0], folder), shutil.copy(val[1], folder),
              shutil.copy(val[2], loose)]
    out = root / "out"
    predict.main(["--config-file", CONFIG, "--weights", weights, "--input", str(folder),
                  str(loose / "*.*"), "--output", str(out), "--score-thresh", str(THRESH)])
    return {"weights": weights, "inputs": sorted(inputs[:2]) + inputs[2:], "out": out,
            "results": json.loads((out / predict.RESULTS_FILE).read_text())}


def _oracle_detections(weights, image_path):
    cfg = build_cfg(CONFIG, ["MODEL.WEIGHTS", weights])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = THRESH
    bgr = np.asarray(Image.open(image_path).convert("RGB"))[:, :, ::-1]
    return DefaultPredictor(cfg)(bgr)["instances"].to("cpu")


def test_results_hold_the_detections_of_the_model(predicted):
    results = predicted["results"]
    assert list(results) == predicted["inputs"]  # folder (sorted) then glob, paths as found
    with open(MetadataCatalog.get("pgdet_demo_val").json_file) as f:
        dataset_id = {c["name"]: c["id"] for c in json.load(f)["categories"]}
    for path in predicted["inputs"][::2]:
        instances = _oracle_detections(predicted["weights"], path)
        detections = results[path]
        assert len(detections) == len(instances) > 5
        x0, y0, x1, y1 = instances.pred_boxes.tensor.T
        expected_boxes = torch.stack([x0, y0, x1 - x0, y1 - y0], dim=1)
        np.testing.assert_allclose([d["bbox"] for d in detections], expected_boxes.numpy(),
                                   atol=1e-4)
        assert [d["score"] for d in detections] == pytest.approx(instances.scores.tolist(),
                                                                 abs=1e-6)
        assert min(d["score"] for d in detections) > THRESH
        assert [d["category_id"] for d in detections] == [
            dataset_id[DEMO_CLASS_NAMES[c]] for c in instances.pred_classes.tolist()]


def test_each_image_is_written_with_its_detections_drawn(predicted):
    for path in predicted["inputs"]:
        drawn = predicted["out"] / os.path.basename(path)
        with Image.open(drawn) as picture, Image.open(path) as original:
            assert picture.size == original.size
            difference = np.abs(np.asarray(picture.convert("RGB"), dtype=float)
                                - np.asarray(original.convert("RGB"), dtype=float))
        assert difference.mean() > 5  # boxes and labels, not a re-encoded copy


def test_class_names_come_from_the_test_dataset():
    cfg = build_cfg(CONFIG)
    assert predict.dataset_metadata(cfg).thing_classes == list(DEMO_CLASS_NAMES)
    cfg.DATASETS.TEST = ("nobody_registered_this",)
    assert predict.dataset_metadata(cfg).get("thing_classes") is None


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict.main(["--config-file", CONFIG, "--input", str(tmp_path / "none*.jpg"),
                      "--output", str(tmp_path / "out")])
    assert str(e.value) == f"error: --input {tmp_path / 'none*.jpg'}: no such image file, and " \
        "no folder of images or glob pattern matching any"
    with pytest.raises(SystemExit) as e:
        predict.main(["--config-file", CONFIG, "--weights", str(tmp_path / "w.pth"),
                      "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert "w.pth" in str(e.value) and "\n" not in str(e.value)


def test_demo_draws_each_models_detections_on_val_images(predicted, tmp_path, capsys):
    """The last step of `make demo` (scripts/demo.py), on the random checkpoint."""
    spec = importlib.util.spec_from_file_location("demo", REPO / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = str(REPO / "pgdet" / "configs" / "demo" / "frcnn_MobileNetV2_FPN_demo.yaml")
    demo.draw_detections([("random", config, predicted["weights"])], str(tmp_path))
    folder = tmp_path / "pictures" / "random"
    val = [d["file_name"] for d in DatasetCatalog.get("pgdet_demo_val")[:demo.PICTURE_IMAGES]]
    assert sorted(os.listdir(folder)) == sorted([predict.RESULTS_FILE]
                                                + [os.path.basename(p) for p in val])
    assert list(json.loads((folder / predict.RESULTS_FILE).read_text())) == val
    assert str(folder) in capsys.readouterr().out
