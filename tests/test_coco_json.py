"""DATASETS.COCO_JSONS: a user's COCO export trains and is evaluated with no Python code.

Oracles: hand-made COCO files whose expected loading (category mapping, crowd objects, clipped
and dropped boxes) is typed here, COCOeval's documented treatment of crowd regions (a detection
matching one is ignored, not a false positive), and, end to end, what benchmarks/table1.py's
stages themselves wrote (each run's eval_metrics.json and log).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image, ImageDraw
from test_table1 import _draw_shape, checkout_env, parse_markdown_table, table1_command

from pgdet import get_pgdet_cfg
from pgdet.data import (
    DatasetConfigError,
    DatasetNotFoundError,
    load_training_dicts,
    register_coco_json_dataset,
    register_datasets_from_cfg,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "pgdet", "configs", "demo")
# listed out of order in the files: detectron2 maps sorted ids 3, 7, 12 to 0, 1, 2
CATEGORIES = [{"id": 12, "name": "triangle"}, {"id": 3, "name": "disc"},
              {"id": 7, "name": "square"}]
ID_MAP = {3: 0, 7: 1, 12: 2}
SHAPE_OF = {3: 0, 7: 1, 12: 2}  # category id -> test_table1._draw_shape's shape index


def _ann(ann_id, image_id, category_id, bbox, iscrowd=0):
    """A COCO annotation of box `bbox` (XYWH) whose polygon is the box's outline."""
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": float(w * h), "iscrowd": iscrowd,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _register_through_config(name, json_file, image_root):
    cfg = get_pgdet_cfg()
    cfg.DATASETS.COCO_JSONS = [f"{name}:{json_file}:{image_root}"]
    register_datasets_from_cfg(cfg)


def test_coco_json_loads_with_mapped_ids_crowd_kept_and_bad_boxes_counted(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    annotations = [
        _ann(1, 21, 3, [10, 10, 20, 20]),  # kept: class 0
        _ann(2, 21, 12, [40, 20, 30, 30], iscrowd=1),  # kept as a crowd region: class 2
        _ann(3, 21, 7, [5, 5, 0, 10]),  # zero width: dropped
        _ann(4, 5, 7, [120, 10, 10, 10]),  # entirely right of the 100-px image: dropped
        _ann(5, 5, 12, [90, 60, 20, 30]),  # past the bottom-right corner: clipped
        _ann(6, 9, 3, [0, 0, 50, 50], iscrowd=1),  # its image has only a crowd: removed
    ]
    data = {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80}
                       for i in (21, 5, 9)],
            "categories": CATEGORIES, "annotations": annotations}
    json_file = tmp_path / "export.json"
    json_file.write_text(json.dumps(data))
    _register_through_config("test_coco_json_loading", json_file, images)

    with caplog.at_level("WARNING", logger="pgdet.data.checks"):
        dicts = load_training_dicts(["test_coco_json_loading"], num_classes=3, filter_empty=True)
    message = caplog.text
    assert str(json_file) in message and "of 5 boxes, 1 were clipped" in message
    assert "1 with zero or negative size and 1 entirely outside" in message

    metadata = MetadataCatalog.get("test_coco_json_loading")
    assert metadata.thing_dataset_id_to_contiguous_id == ID_MAP
    assert metadata.thing_classes == ["disc", "square", "triangle"]
    loaded = {d["image_id"]: [(a["category_id"], a.get("iscrowd", 0),
                               BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS))
                              for a in d["annotations"]] for d in dicts}
    assert loaded == {21: [(0, 0, [10, 10, 30, 30]), (2, 1, [40, 20, 70, 50])],
                      5: [(2, 0, [90, 60, 100, 80])]}


def test_crowd_regions_and_original_ids_in_evaluation(tmp_path):
    """COCOeval ignores a detection that matches a crowd region: a higher-scored detection on
    the crowd does not lower the AP of a perfect detection (as a false positive it would halve
    precision at full recall), and predictions are written back with the file's ids."""
    images = tmp_path / "images"
    images.mkdir()
    data = {"images": [{"id": 4, "file_name": "4.png", "width": 100, "height": 80}],
            "categories": CATEGORIES,
            "annotations": [_ann(1, 4, 7, [10, 10, 30, 30]),
                            _ann(2, 4, 7, [50, 20, 40, 40], iscrowd=1)]}
    json_file = tmp_path / "val.json"
    json_file.write_text(json.dumps(data))
    _register_through_config("test_coco_json_eval", json_file, images)
    DatasetCatalog.get("test_coco_json_eval")  # as the test loader does before evaluating
    evaluator = COCOEvaluator("test_coco_json_eval", output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    detections = Instances((80, 100), pred_boxes=Boxes(torch.tensor([[55.0, 25, 85, 55],
                                                                     [10.0, 10, 40, 40]])),
                           scores=torch.tensor([0.95, 0.9]), pred_classes=torch.tensor([1, 1]))
    evaluator.process([{"image_id": 4}], [{"instances": detections}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)
    with open(tmp_path / "eval" / "coco_instances_results.json") as f:
        assert {p["category_id"] for p in json.load(f)} == {7}


def test_entry_errors_name_the_key_and_the_entry(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    json_file = tmp_path / "a.json"
    json_file.write_text(json.dumps({"images": [], "categories": CATEGORIES, "annotations": []}))
    cfg = get_pgdet_cfg()
    cfg.DATASETS.COCO_JSONS = [f"only_a_name:{json_file}"]
    with pytest.raises(DatasetConfigError, match="DATASETS.COCO_JSONS entry .*only_a_name"):
        register_datasets_from_cfg(cfg)
    missing = tmp_path / "nowhere.json"
    with pytest.raises(DatasetNotFoundError) as info:
        register_coco_json_dataset("test_coco_json_missing", str(missing), str(images))
    assert str(missing) in str(info.value) and "DATASETS.COCO_JSONS" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="image root .*no_images"):
        register_coco_json_dataset("test_coco_json_missing", str(json_file),
                                   str(tmp_path / "no_images"))
    with pytest.raises(DatasetConfigError, match="'coco_2017_val' is already registered"):
        register_coco_json_dataset("coco_2017_val", str(json_file), str(images))
    register_coco_json_dataset("test_coco_json_twice", str(json_file), str(images))
    register_coco_json_dataset("test_coco_json_twice", str(json_file), str(images))  # no-op
    other = tmp_path / "b.json"
    other.write_text(json_file.read_text())
    with pytest.raises(DatasetConfigError, match=f"already registered \\(from {json_file}\\)"):
        register_coco_json_dataset("test_coco_json_twice", str(other), str(images))


def test_train_net_stops_on_a_malformed_entry_with_a_one_line_error(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
           os.path.join(DEMO, "frcnn_MobileNetV2_FPN_demo.yaml"), "OUTPUT_DIR", str(tmp_path),
           "DATASETS.COCO_JSONS", "['mydata:/no/such/file.json']"]
    run = subprocess.run(cmd, cwd=REPO, env=checkout_env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(
        "error: DATASETS.COCO_JSONS entry 'mydata:/no/such/file.json' is not")


def write_tiny_coco(root, size=128):
    """train.json (8 images) and val.json (4) over images/, two large shapes per image (each
    with its box as polygon), with COCO's awkward cases in image 0 of each: a crowd region, and
    in train a zero-size box, a box outside the image and one reaching past its edge."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    for split, count, code in (("train", 8, 0), ("val", 4, 1)):
        images, annotations = [], []
        for i in range(count):
            image_id = 100 * code + i + 1
            rng = np.random.default_rng([code, i])
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            for k, category in enumerate((3, 7, 12, 3)[(i + code) % 3:][:2]):
                side = int(rng.integers(40, 60))
                x0, y0 = 4 + 64 * k + int(rng.integers(0, 61 - side)), int(rng.integers(4, 60))
                colour = tuple(int(v) for v in rng.integers(150, 256, 3))
                _draw_shape(ImageDraw.Draw(image), SHAPE_OF[category], x0, y0, side, colour)
                annotations.append(_ann(len(annotations) + 1, image_id, category,
                                        [x0, y0, side, side]))
            if i == 0:
                awkward = [(12, [0, size - 20, 30, 20], 1)] + [
                    (7, [20, 20, 0, 12], 0), (7, [size + 10, 5, 20, 20], 0),
                    (3, [size - 10, 50, 30, 20], 0)] * (split == "train")
                annotations += [_ann(len(annotations) + 1 + j, image_id, c, b, iscrowd=crowd)
                                for j, (c, b, crowd) in enumerate(awkward)]
            name = f"{split}{i:02d}.jpg"
            image.save(os.path.join(root, "images", name))
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump({"images": images, "categories": CATEGORIES, "annotations": annotations}, f)


def test_table1_end_to_end_on_a_coco_export(tmp_path):
    """The runner on a COCO export named only in overrides: baseline 8 iterations, the control
    and PG γ=1 2 each, greedy NMS; every run evaluated against the export's own json."""
    coco = tmp_path / "coco"
    write_tiny_coco(str(coco))
    out = tmp_path / "out"
    images = coco / "images"
    cmd = table1_command(out, ["--methods", "pg_gamma1", "--no-soft-nms", "--bootstrap", "20",
                               "--figure-images", "1"], [
        "DATASETS.COCO_JSONS",
        f"['my_train:{coco / 'train.json'}:{images}','my_val:{coco / 'val.json'}:{images}']",
        "DATASETS.TRAIN", "('my_train',)", "DATASETS.TEST", "('my_val',)",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    run = subprocess.run(cmd, cwd=REPO, env=checkout_env(), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    rows = parse_markdown_table((out / "table1.md").read_text())
    predicted_ids = set()
    for label, folder in (("standard (baseline)", "baseline"),
                          ("standard fine-tune", "finetune_standard/seed0"),
                          ("PG γ=1", "pg_gamma1/seed0")):
        metrics = json.loads((out / folder / "eval_metrics.json").read_text())
        assert rows[label, "greedy"]["AP"].startswith(f"{metrics['AP']:.1f}")
        predictions = out / folder / "inference" / "my_val" / "coco_instances_results.json"
        predicted_ids |= {p["category_id"] for p in json.loads(predictions.read_text())}
    assert predicted_ids and predicted_ids <= set(ID_MAP)  # written back with the file's ids
    (log,) = (out / "baseline").glob("log_*.txt")
    assert "of 20 boxes, 1 were clipped" in log.read_text()
    assert "1 with zero or negative size and 1 entirely outside" in log.read_text()
    pg_records = (out / "pg_gamma1" / "seed0" / "metrics.json").read_text()
    assert "pg/mean_weight" in pg_records
    pg_row = next(r for r in json.loads((out / "table1.json").read_text())["rows"]
                  if r["method"] == "PG γ=1")
    assert pg_row["vs_control"]["bootstrap95"] is not None
