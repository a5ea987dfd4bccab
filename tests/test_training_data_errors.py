"""Training data that cannot work is refused at start, naming the file or the image."""
import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

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
    assert "a.png" in message and "image_id 7" in message and "MODEL.ROI_HEADS.NUM_CLASSES is 2" in message
    assert len(load_training_dicts(["pgdet_test_classes"], num_classes=3, filter_empty=False)) == 1
