"""Training data that cannot work is refused at start, and bad boxes are mended or dropped with
counts in the log, naming the file or the image."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BoxMode

from pgdet.data import DatasetContentError, load_training_dicts


def _coco(tmp_path, name, categories):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 40}],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": [{"id": 1, "image_id": 7, "category_id": categories[-1], "iscrowd": 0,
                         "bbox": [5, 5, 10, 10], "area": 100}],
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    for registry in (DatasetCatalog, MetadataCatalog):
        if name in registry.list():
            registry.remove(name)
    register_coco_instances(name, {}, str(path), str(images))
    return path


def test_malformed_coco_json_names_the_file(tmp_path):
    path = _coco(tmp_path, "pgdet_test_malformed", [1])
    path.write_text('{"images": [')
    with pytest.raises(DatasetContentError) as e:
        load_training_dicts(["pgdet_test_malformed"], num_classes=1, filter_empty=False)
    assert str(path) in str(e.value)


def test_class_beyond_num_classes_names_image_and_key(tmp_path):
    _coco(tmp_path, "pgdet_test_classes", [1, 2, 3])
    with pytest.raises(DatasetContentError) as e:
        load_training_dicts(["pgdet_test_classes"], num_classes=2, filter_empty=False)
    message = str(e.value)
    assert "a.png" in message and "image_id 7" in message
    assert "MODEL.ROI_HEADS.NUM_CLASSES is 2" in message
    assert len(load_training_dicts(["pgdet_test_classes"], num_classes=3, filter_empty=False)) == 1


def test_bad_boxes_clipped_or_dropped_with_counts_naming_the_file(tmp_path, caplog):
    """Hand-made COCO file, image 100x80: each kind of bad box, with the expected outcome."""
    boxes = {  # annotation id: (bbox as XYWH in the json, expected XYXY after loading or None)
        1: ([10, 10, 20, 20], (10, 10, 30, 30)),  # inside: unchanged
        2: ([90, 70, 20, 20], (90, 70, 100, 80)),  # reaches past the right/bottom edge: clipped
        3: ([-5, -5, 10, 10], (0, 0, 5, 5)),  # reaches past the top-left corner: clipped
        4: ([5, 5, 0, 10], None),  # zero width: dropped
        5: ([5, 5, 10, -3], None),  # negative height: dropped
        6: ([150, 10, 10, 10], None),  # entirely right of the image: dropped
    }
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 80},
                   {"id": 8, "file_name": "only_bad.png", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "c1"}],
        "annotations": [{"id": i, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": b,
                         "area": 1.0} for i, (b, _) in boxes.items()]
        + [{"id": 9, "image_id": 8, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 0, 0],
            "area": 1.0}],
    }
    path = tmp_path / "bad_boxes.json"
    path.write_text(json.dumps(data))
    name = "pgdet_test_bad_boxes"
    for registry in (DatasetCatalog, MetadataCatalog):
        if name in registry.list():
            registry.remove(name)
    register_coco_instances(name, {}, str(path), str(tmp_path))

    with caplog.at_level("WARNING", logger="pgdet.data.checks"):
        dicts = load_training_dicts([name], num_classes=1, filter_empty=True)
    assert [d["file_name"].rsplit("/", 1)[-1] for d in dicts] == ["a.png"]
    kept = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in dicts[0]["annotations"]]
    expected = [xyxy for _, xyxy in boxes.values() if xyxy is not None]
    assert np.allclose(kept, expected)
    message = caplog.text
    assert str(path) in message and "of 7 boxes" in message
    assert "2 were clipped" in message
    assert "bbox [90, 70, 20, 20] in XYWH_ABS" in message  # named as annotated, not as clipped
    assert "3 with zero or negative size" in message  # ids 4, 5 and 9
    assert "1 entirely outside" in message
    assert "only_bad.png" in message and "image_id 8" in message
    assert "1 training images had no box left" in message

    unfiltered = load_training_dicts([name], num_classes=1, filter_empty=False)
    assert [len(d["annotations"]) for d in unfiltered] == [3, 0]


@pytest.mark.parametrize("config, key", [
    ("pgdet/configs/bccd/retinanet_MobileNetV2_FPN_bccd.yaml", "MODEL.RETINANET.NUM_CLASSES"),
    ("pgdet/configs/bccd/frcnn_MobileNetV2_FPN_bccd.yaml", "MODEL.ROI_HEADS.NUM_CLASSES"),
])
def test_class_error_names_the_key_the_detector_reads(tmp_path, config, key):
    """Through the trainer's loader: a RetinaNet user is sent to RETINANET.NUM_CLASSES (the key
    its head is built from), not to the ROI heads' key that RetinaNet never reads."""
    from pgdet.engine import Trainer, build_cfg

    _coco(tmp_path, "pgdet_test_classes_key", [1, 2, 3, 4])
    cfg = build_cfg(config, ["DATASETS.TRAIN", "('pgdet_test_classes_key',)", key, "3"])
    with pytest.raises(DatasetContentError, match=f"{key} is 3"):
        Trainer.build_train_loader(cfg)


def test_wrong_image_root_is_named_at_start(tmp_path):
    """An image root that exists but holds other files fails in setup, not at the first batch:
    one line naming the dataset, the root and a missing image."""
    from test_coco_json import write_tiny_coco
    from test_config_errors import DEMO

    from pgdet.engine import setup
    from pgdet.engine.entry import USER_ERRORS

    write_tiny_coco(str(tmp_path))
    wrong = tmp_path / "not_the_images"
    wrong.mkdir()
    args = SimpleNamespace(
        config_file=DEMO, eval_only=False, resume=False, num_gpus=1, machine_rank=0,
        opts=["DATASETS.COCO_JSONS", f"['wrong_root_train:{tmp_path / 'train.json'}:{wrong}']",
              "DATASETS.TRAIN", "('wrong_root_train',)", "DATASETS.TEST", "()",
              "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(USER_ERRORS) as e:
        setup(args)
    message = str(e.value)
    assert "\n" not in message and "'wrong_root_train'" in message
    assert f"{wrong}/train00.jpg does not exist" in message  # the first image of train.json
    assert f"images under {wrong}," in message


def test_class_beyond_num_classes_names_the_jsons_category_id(tmp_path):
    """detectron2 maps a json's category ids (3, 7, 12, 40) to indices 0..3: the message names
    both the index and the id the user finds in the json."""
    path = _coco(tmp_path, "pgdet_test_category_id", [3, 7, 12, 40])
    with pytest.raises(DatasetContentError) as e:
        load_training_dicts(["pgdet_test_category_id"], num_classes=3, filter_empty=False)
    message = str(e.value)
    assert "class index 3" in message and f"category id 40 in {path}" in message
