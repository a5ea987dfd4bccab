"""Datasets: the generated demo, the VOC loader on real BCCD, and the errors for bad input.

The VOC loader's tests read six BCCD images of tests/fixtures/bccd; those about the whole dataset
run where the full BCCD is in the data root (`pgdet-fetch-data bccd`) and are skipped elsewhere.
Oracles: raw bytes on disk, pycocotools' COCO reader and COCOeval (perfect predictions must score
AP 100), torchvision's box_iou, BCCD's published statistics (364 images; 4,155 RBC, 372 WBC and
361 Platelets boxes), the class names counted in the fixture's XML text, boxes copied by hand
from BCCD's XML, and detectron2's own DatasetMapper.
"""
import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_iou

import pgdet.data as pdata
from pgdet.config import add_pgdet_config
from pgdet.data import demo
from pgdet.data.data_root import resolve_data_path

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
BCCD = os.path.join(FIXTURES, "bccd", "BCCD")  # six images: train 2, val 2, test 2
FULL_BCCD = resolve_data_path("$PGDET_DATA/bccd/BCCD")
needs_full_bccd = pytest.mark.skipif(
    not os.path.isdir(FULL_BCCD),
    reason="about the whole BCCD, not in the data root: fetch it with `pgdet-fetch-data bccd`")
SMALL = dict(num_train=4, num_val=2, image_size=96)


@pytest.fixture(autouse=True)
def restore_catalog():
    """Tests register datasets globally: drop the new ones, restore the default demo afterwards."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    pdata.register_demo_datasets()


def _files(directory):
    """{relative path: bytes} of every file below ``directory``."""
    out = {}
    for dirpath, _, filenames in os.walk(directory):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def _dataset_dir(paths):
    return os.path.dirname(paths["train"].json_file)


# ---------------------------------------------------------------- demo: determinism and caching


def test_demo_same_seed_same_bytes_other_seed_different(tmp_path):
    first = _files(_dataset_dir(pdata.generate_demo_dataset(str(tmp_path / "a"), 5, **SMALL)))
    again = _files(_dataset_dir(pdata.generate_demo_dataset(str(tmp_path / "b"), 5, **SMALL)))
    other = _files(_dataset_dir(pdata.generate_demo_dataset(str(tmp_path / "c"), 6, **SMALL)))
    assert len(first) == 3 + SMALL["num_train"] + 2 * SMALL["num_val"]  # train, val, tune
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_demo_cache_is_reused_not_rewritten(tmp_path):
    paths = pdata.generate_demo_dataset(str(tmp_path), 1, **SMALL)
    directory = _dataset_dir(paths)
    stamps = {p: os.stat(os.path.join(directory, p)).st_mtime_ns for p in _files(directory)}
    assert pdata.generate_demo_dataset(str(tmp_path), 1, **SMALL) == paths
    assert {p: os.stat(os.path.join(directory, p)).st_mtime_ns for p in stamps} == stamps
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(directory)]


def test_demo_writer_that_loses_the_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process completes the same dataset while this one is still writing its copy."""
    reference = _files(_dataset_dir(pdata.generate_demo_dataset(str(tmp_path / "ref"), 2, **SMALL)))
    real_write_split = demo._write_split
    raced = []

    def write_split_while_another_process_finishes(*args):
        if not raced:
            raced.append(True)
            pdata.generate_demo_dataset(str(tmp_path / "shared"), 2, **SMALL)
        real_write_split(*args)

    monkeypatch.setattr(demo, "_write_split", write_split_while_another_process_finishes)
    paths = pdata.generate_demo_dataset(str(tmp_path / "shared"), 2, **SMALL)
    assert raced
    assert os.listdir(tmp_path / "shared") == [os.path.basename(_dataset_dir(paths))]
    assert _files(_dataset_dir(paths)) == reference


# ---------------------------------------------------------------- demo: content


@pytest.fixture(scope="module")
def demo_train_json(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo"))
    paths = pdata.generate_demo_dataset(root, 0, num_train=60, num_val=1)
    return paths["train"]


def test_demo_content_is_hard_enough(demo_train_json):
    with open(demo_train_json.json_file) as f:
        coco = json.load(f)
    size = demo.DEFAULT_IMAGE_SIZE
    assert [c["name"] for c in coco["categories"]] == ["disc", "square", "triangle", "cross"]
    boxes = torch.tensor([a["bbox"] for a in coco["annotations"]], dtype=torch.float64)
    classes = torch.tensor([a["category_id"] for a in coco["annotations"]])
    image_ids = torch.tensor([a["image_id"] for a in coco["annotations"]])
    assert torch.bincount(classes, minlength=5)[1:].min() >= 30  # every class well represented
    assert (boxes[:, 2:] > 0).all() and (boxes[:, :2] >= 0).all()
    assert (boxes[:, :2] + boxes[:, 2:] <= size + 1e-6).all()
    longer_side = boxes[:, 2:].max(dim=1).values
    assert (longer_side <= 12).sum() >= 20  # small objects
    assert (longer_side >= 0.4 * size).sum() >= 10  # large objects
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)
    same_image = image_ids[:, None] == image_ids[None, :]
    same_class = classes[:, None] == classes[None, :]
    pairs = torch.triu(same_image, diagonal=1)
    iou = box_iou(xyxy, xyxy)
    # Overlaps that greedy NMS at 0.5 would wrongly merge, and overlaps across classes.
    assert (pairs & same_class & (iou > 0.5)).sum() >= 5
    assert (pairs & same_class & (iou > 0.1)).sum() >= 30
    assert (pairs & ~same_class & (iou > 0.1)).sum() >= 30
    for image in coco["images"][:5]:
        with Image.open(os.path.join(demo_train_json.image_root, image["file_name"])) as im:
            assert im.mode == "RGB" and im.size == (image["width"], image["height"]) == (size, size)


def test_demo_registers_as_coco_dataset(tmp_path):
    pdata.register_demo_datasets(str(tmp_path), seed=3, **SMALL)
    registered_loader = DatasetCatalog["pgdet_demo_train"]
    assert not os.listdir(tmp_path)  # lazy: nothing generated by registering
    dicts = DatasetCatalog.get("pgdet_demo_train")
    metadata = MetadataCatalog.get("pgdet_demo_train")
    assert metadata.thing_classes == ["disc", "square", "triangle", "cross"]
    assert metadata.evaluator_type == "coco"
    assert len(dicts) == SMALL["num_train"]
    oracle = COCO(metadata.json_file)
    for record in dicts:
        expected = oracle.loadAnns(oracle.getAnnIds(imgIds=record["image_id"]))
        got = record["annotations"]
        assert [a["bbox"] for a in expected] == [a["bbox"] for a in got]
        assert [a["category_id"] - 1 for a in expected] == [a["category_id"] for a in got]
        assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in got)
        image_file = oracle.imgs[record["image_id"]]["file_name"]
        assert record["file_name"] == os.path.join(metadata.image_root, image_file)
    pdata.register_demo_datasets(str(tmp_path), seed=3, **SMALL)
    assert DatasetCatalog["pgdet_demo_train"] is registered_loader  # idempotent
    pdata.register_demo_datasets(str(tmp_path), seed=4, **SMALL)
    assert "seed4" in MetadataCatalog.get("pgdet_demo_train").json_file
    assert len(DatasetCatalog.get("pgdet_demo_val")) == SMALL["num_val"]
    tune = DatasetCatalog.get("pgdet_demo_tune")
    assert len(tune) == SMALL["num_val"]
    val_boxes = [[a["bbox"] for a in r["annotations"]] for r in DatasetCatalog.get("pgdet_demo_val")]
    assert [[a["bbox"] for a in r["annotations"]] for r in tune] != val_boxes, "drawn apart"


def test_demo_registered_at_import_under_default_root():
    assert {"pgdet_demo_train", "pgdet_demo_val"} <= set(DatasetCatalog.list())
    json_file = MetadataCatalog.get("pgdet_demo_val").json_file
    assert json_file.startswith(demo.default_demo_root() + os.sep)
    assert f"_{demo.DEFAULT_NUM_TRAIN}-{demo.DEFAULT_NUM_VAL}" in json_file


def _perfect_predictions_ap(dataset_name, output_dir):
    """COCO AP of predictions equal to the ground truth, through detectron2's COCOEvaluator.

    Loads the dataset before building the evaluator, in the order of DefaultTrainer.test.
    """
    records = DatasetCatalog.get(dataset_name)
    evaluator = COCOEvaluator(dataset_name, output_dir=str(output_dir))
    evaluator.reset()
    for record in records:
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in record["annotations"]]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([record], [{"instances": instances}])
    return evaluator.evaluate()["bbox"]["AP"]


def test_coco_evaluator_scores_ground_truth_100_on_demo_and_voc(tmp_path):
    pdata.register_demo_datasets(str(tmp_path / "demo"), seed=3, **SMALL)
    assert _perfect_predictions_ap("pgdet_demo_val", tmp_path) == pytest.approx(100.0)
    pdata.register_voc_dataset("test_bccd_test", BCCD, "test")
    assert MetadataCatalog.get("test_bccd_test").evaluator_type == "coco"
    assert _perfect_predictions_ap("test_bccd_test", tmp_path) == pytest.approx(100.0)


# ---------------------------------------------------------------- VOC loader on BCCD


def _load_splits(dirname, caplog, splits=("train", "val", "test", "trainval")):
    for split in splits:
        pdata.register_voc_dataset(f"test_bccd_{split}", dirname, split)
    with caplog.at_level(logging.INFO, logger="pgdet.data.voc"):
        return {split: DatasetCatalog.get(f"test_bccd_{split}") for split in splits}


def _class_counts_in_xml(dirname, image_ids):
    """{class name: objects} of `image_ids`, read from the XML text with a regex (not the loader's
    XML parser)."""
    counts = {}
    for image_id in image_ids:
        with open(os.path.join(dirname, "Annotations", f"{image_id}.xml")) as f:
            for name in re.findall(r"<name>\s*(\w+)\s*</name>", f.read()):
                counts[name] = counts.get(name, 0) + 1
    return counts


def test_voc_loader_on_bccd_images(caplog):
    loaded = _load_splits(BCCD, caplog)
    assert {split: [r["image_id"] for r in d] for split, d in loaded.items()} == {
        "train": ["BloodImage_00087", "BloodImage_00343"],
        "val": ["BloodImage_00338", "BloodImage_00389"],
        "test": ["BloodImage_00157", "BloodImage_00390"],
        "trainval": ["BloodImage_00087", "BloodImage_00338", "BloodImage_00343",
                     "BloodImage_00389"]}
    assert MetadataCatalog.get("test_bccd_test").thing_classes == ["Platelets", "RBC", "WBC"]
    # Every object of the XML is loaded but the two zero-area boxes, both RBC (00338, 00343).
    all_images = loaded["trainval"] + loaded["test"]
    in_xml = _class_counts_in_xml(BCCD, [r["image_id"] for r in all_images])
    classes = [a["category_id"] for r in all_images for a in r["annotations"]]
    assert np.bincount(classes).tolist() == [in_xml["Platelets"], in_xml["RBC"] - 2, in_xml["WBC"]]
    assert "dropped 2 degenerate boxes (in BloodImage_00338, BloodImage_00343)" in caplog.text
    assert "dropped 0 degenerate boxes" in caplog.text  # test split: none there
    # Hand-copied from BloodImage_00338.xml: RBC 453 81 555 182 (1-based) -> 452 80 555 182.
    record = next(r for r in loaded["trainval"] if r["image_id"] == "BloodImage_00338")
    assert record["file_name"] == os.path.join(BCCD, "JPEGImages", "BloodImage_00338.jpg")
    assert (record["width"], record["height"]) == (640, 480)
    assert record["annotations"][0] == {"category_id": 1, "bbox": [452.0, 80.0, 555.0, 182.0],
                                        "bbox_mode": BoxMode.XYXY_ABS}
    assert len(record["annotations"]) == 13  # 14 objects, one of them the point (504, 337)


@needs_full_bccd
def test_voc_loader_on_the_whole_bccd(caplog):
    loaded = _load_splits(FULL_BCCD, caplog)
    assert {split: len(d) for split, d in loaded.items()} == {
        "train": 205, "val": 87, "test": 72, "trainval": 292}
    assert MetadataCatalog.get("test_bccd_test").thing_classes == ["Platelets", "RBC", "WBC"]
    # Published: RBC 4155, WBC 372, Platelets 361 over all 364 images; trainval + test cover them
    # once. Both zero-area boxes (in 00338 and 00343) are RBC.
    all_images = loaded["trainval"] + loaded["test"]
    classes = [a["category_id"] for r in all_images for a in r["annotations"]]
    assert np.bincount(classes).tolist() == [361, 4155 - 2, 372]
    assert len({r["image_id"] for r in all_images}) == 364
    assert "dropped 2 degenerate boxes (in BloodImage_00338, BloodImage_00343)" in caplog.text
    assert "dropped 0 degenerate boxes" in caplog.text  # test split: none there


@needs_full_bccd
def test_perfect_predictions_score_100_on_the_whole_bccd_test(tmp_path):
    pdata.register_voc_dataset("test_full_bccd_test", FULL_BCCD, "test")
    assert _perfect_predictions_ap("test_full_bccd_test", tmp_path) == pytest.approx(100.0)


def _write_voc(root, annotations):
    """A VOC folder whose split 'train' lists ``annotations`` ({id: xml text})."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for file_id, xml in annotations.items():
        with open(os.path.join(root, "Annotations", f"{file_id}.xml"), "w") as f:
            f.write(xml)
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("\n".join(annotations) + "\n")
    return str(root)


def _voc_xml(objects, width=100, height=80):
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    size = f"<size><width>{width}</width><height>{height}</height></size>"
    return f"<annotation>{size}{body}</annotation>"


def test_voc_clips_and_drops_boxes_with_counts(tmp_path, caplog):
    boxes = [("b", (1, 1, 100, 80)), ("a", (50, 60, 130, 90)),  # whole image; clipped
             ("a", (10, 10, 10, 20)), ("a", (120, 10, 140, 20))]  # zero width; outside
    root = _write_voc(tmp_path, {"img1": _voc_xml(boxes)})
    pdata.register_voc_dataset("test_voc_small", root, "train")
    with caplog.at_level(logging.INFO, logger="pgdet.data.voc"):
        (record,) = DatasetCatalog.get("test_voc_small")
    assert MetadataCatalog.get("test_voc_small").thing_classes == ["a", "b"]
    assert [(a["category_id"], a["bbox"]) for a in record["annotations"]] == [
        (1, [0.0, 0.0, 100.0, 80.0]), (0, [49.0, 59.0, 100.0, 80.0])]
    assert "dropped 2 degenerate boxes (in img1); clipped 1 boxes to the image" in caplog.text


def test_voc_malformed_xml_names_the_file(tmp_path):
    root = _write_voc(tmp_path, {"good": _voc_xml([("a", (1, 1, 5, 5))]),
                                 "broken": "<annotation><size><width>10</width></annotation>"})
    broken = os.path.join(root, "Annotations", "broken.xml")
    with pytest.raises(pdata.MalformedAnnotationError, match=re.escape(broken)):
        pdata.register_voc_dataset("test_voc_broken", root, "train")
    pdata.register_voc_dataset("test_voc_broken", root, "train", class_names=["a"])
    with pytest.raises(pdata.MalformedAnnotationError, match=re.escape(broken)):
        DatasetCatalog.get("test_voc_broken")
    with open(broken, "w") as f:
        f.write(_voc_xml([("a", (1, 1, 5, 5))]).replace("<xmax>5</xmax>", ""))
    missing_field = re.escape(f"{broken} has no <bndbox/xmax>")
    with pytest.raises(pdata.MalformedAnnotationError, match=missing_field):
        DatasetCatalog.get("test_voc_broken")


# ---------------------------------------------------------------- errors for missing datasets


def test_missing_dataset_path_names_path_and_detectron2_datasets(tmp_path, monkeypatch):
    missing_json = str(tmp_path / "nowhere" / "instances.json")
    register_coco_instances("test_missing_coco", {}, missing_json, str(tmp_path))
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/where/i/think")
    with pytest.raises(FileNotFoundError) as info:
        pdata.check_datasets_exist(["test_missing_coco"])
    message = str(info.value)
    assert "test_missing_coco" in message and missing_json in message
    assert "DETECTRON2_DATASETS='/data/where/i/think'" in message
    monkeypatch.delenv("DETECTRON2_DATASETS")
    coco_json = MetadataCatalog.get("coco_2017_val").json_file
    assert not os.path.exists(coco_json)
    with pytest.raises(pdata.DatasetNotFoundError) as info:
        pdata.check_datasets_exist(["coco_2017_val"])
    assert coco_json in str(info.value) and "DETECTRON2_DATASETS is unset" in str(info.value)


def test_missing_voc_dir_is_reported(tmp_path):
    missing_dir = str(tmp_path / "no_voc_here")
    with pytest.raises(pdata.DatasetNotFoundError, match=re.escape(missing_dir)):
        pdata.register_voc_dataset("test_voc_missing", missing_dir, "train")
    pdata.register_voc_dataset("test_voc_missing", missing_dir, "train", class_names=["a"])
    expected = f"test_voc_missing.*{re.escape(missing_dir)}.*DETECTRON2_DATASETS"
    with pytest.raises(pdata.DatasetNotFoundError, match=expected):
        pdata.check_datasets_exist(["test_voc_missing"])


def test_unknown_dataset_lists_registered_names_and_demo_passes(tmp_path):
    with pytest.raises(KeyError) as info:
        pdata.check_datasets_exist(["pgdet_demo_trian"])
    assert isinstance(info.value, pdata.UnknownDatasetError)
    assert "'pgdet_demo_trian' is not registered" in str(info.value)
    assert "pgdet_demo_train" in str(info.value)
    pdata.register_demo_datasets(str(tmp_path), seed=9, **SMALL)
    pdata.register_voc_dataset("test_bccd_val", BCCD, "val")
    assert not os.path.exists(MetadataCatalog.get("pgdet_demo_val").json_file)
    pdata.check_datasets_exist(["pgdet_demo_train", "pgdet_demo_val", "test_bccd_val"])
    assert os.path.isfile(MetadataCatalog.get("pgdet_demo_val").json_file)  # generated by the check


def test_register_datasets_from_cfg(tmp_path, monkeypatch):
    cfg = add_pgdet_config(get_cfg())
    cfg.DATASETS.DEMO.ROOT = str(tmp_path)
    cfg.DATASETS.DEMO.SEED = 11
    cfg.DATASETS.VOC_DIRS = [f"test_cfg_bccd_val:{BCCD}:val",
                             "test_cfg_bccd_test:$PGDET_DATA/bccd/BCCD:test"]
    monkeypatch.setenv("PGDET_DATA", FIXTURES)  # the fixture has the data root's layout
    pdata.register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get("pgdet_demo_train").json_file.startswith(str(tmp_path / "v"))
    assert "seed11" in MetadataCatalog.get("pgdet_demo_train").json_file
    bccd_test = MetadataCatalog.get("test_cfg_bccd_test")
    assert (bccd_test.dirname, bccd_test.split) == (BCCD, "test")
    assert len(DatasetCatalog.get("test_cfg_bccd_val")) == 2
    cfg.DATASETS.VOC_DIRS = ["no_split_given:/some/dir"]
    with pytest.raises(ValueError, match="name:dir:split"):
        pdata.register_datasets_from_cfg(cfg)


# ---------------------------------------------------------------- mapper


def _mapper_pair():
    kwargs = dict(is_train=True, augmentations=[], image_format="BGR")
    return DatasetMapper(**kwargs), pdata.CheckedDatasetMapper(**kwargs)


def test_mapper_output_identical_to_detectron2s(tmp_path):
    pdata.register_demo_datasets(str(tmp_path), seed=3, **SMALL)
    reference, checked = _mapper_pair()
    for record in DatasetCatalog.get("pgdet_demo_train"):
        expected, got = reference(record), checked(record)
        assert torch.equal(expected["image"], got["image"])
        assert torch.equal(expected["instances"].gt_boxes.tensor, got["instances"].gt_boxes.tensor)
        assert torch.equal(expected["instances"].gt_classes, got["instances"].gt_classes)
    cfg = add_pgdet_config(get_cfg())
    assert isinstance(pdata.CheckedDatasetMapper(cfg, is_train=False), DatasetMapper)


@pytest.mark.parametrize("content", [None, b"not an image at all", "truncated"])
def test_mapper_unreadable_image_names_file_and_id(tmp_path, content):
    path = str(tmp_path / "broken.png")
    if content == "truncated":
        Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(path)
        with open(path, "rb") as f:
            head = f.read(60)
        content = head
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    record = {"file_name": path, "image_id": "img_42", "height": 64, "width": 64, "annotations": []}
    _, checked = _mapper_pair()
    with pytest.raises(pdata.ImageReadError) as info:
        checked(record)
    assert path in str(info.value) and "img_42" in str(info.value)
    assert isinstance(info.value, OSError)
