"""pgdet-fetch-data and the data root configs name with ``$PGDET_DATA/``.

The network is replaced by local stand-ins: tar.gz archives with the public archives' layout
(``BCCD_Dataset-<commit>/BCCD/...``, ``yolov5-deepsparse-blogpost-<commit>/datasets/...``)
built here from tests/fixtures/bccd and from images drawn here, passed as file:// URLs.
Oracles: the fixture's own bytes, boxes converted by hand from YOLO fractions, pycocotools'
COCO reader, and the folders each data root is made of.
"""
import io
import os
import tarfile
from types import SimpleNamespace

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

import pgdet.data as pdata
from pgdet.data import data_root, fetch, fetch_asl, fetch_bccd
from pgdet.engine import build_cfg, setup
from pgdet.engine.entry import USER_ERRORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "bccd")
FIXTURE_SPLITS = {"train": 2, "val": 2, "test": 2, "trainval": 4}  # lines of its split files
BCCD_TOP = f"BCCD_Dataset-{fetch.BCCD_COMMIT}"
ASL_TOP = f"yolov5-deepsparse-blogpost-{fetch.ASL_COMMIT}"


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch):
    """No data root of this machine is seen: HOME, PGDET_DATA and the current folder are
    temporary (so ../shared/data is tmp_path/shared/data)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PGDET_DATA", raising=False)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _files(directory):
    """{relative path: bytes} of every file below `directory`."""
    out = {}
    for dirpath, _, filenames in os.walk(directory):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as f:
                out[os.path.relpath(os.path.join(dirpath, filename), directory)] = f.read()
    return out


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _bccd_archive(path, extra=()):
    """A stand-in for GitHub's BCCD archive: the fixture's BCCD/ and LICENSE under the archive's
    top folder, plus the repository's other files (a README) and `extra` (name, bytes)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(os.path.join(FIXTURE, "BCCD"), f"{BCCD_TOP}/BCCD")
        tar.add(os.path.join(FIXTURE, "LICENSE"), f"{BCCD_TOP}/LICENSE")
        _add_bytes(tar, f"{BCCD_TOP}/README.md", b"# BCCD Dataset\n")
        for name, data in extra:
            _add_bytes(tar, name, data)
    return f"file://{path}"


@pytest.fixture
def fixture_sized_bccd(monkeypatch):
    """The fetch's check expects the fixture's sizes instead of BCCD's 364 images."""
    monkeypatch.setattr(fetch_bccd, "SPLIT_SIZES", FIXTURE_SPLITS)
    monkeypatch.setattr(fetch_bccd, "NUM_IMAGES", 6)


def test_fetch_bccd_writes_the_archives_bccd_into_the_cache(tmp_path, capsys, fixture_sized_bccd):
    url = _bccd_archive(tmp_path / "bccd.tar.gz")
    cache = tmp_path / "cache"
    fetch.main(["bccd", "--cache", str(cache), "--url", url])
    assert os.listdir(cache) == ["bccd"]  # no archive or unpacking folder left behind
    assert _files(cache / "bccd") == {p: b for p, b in _files(FIXTURE).items()
                                      if p.startswith("BCCD") or p == "LICENSE"}
    out = capsys.readouterr().out
    assert f"downloading {url}" in out and f"written to {cache / 'bccd'}" in out
    assert f"PGDET_DATA={cache}" in out  # not a default root: says how configs find it


def test_fetch_is_idempotent_and_replaces_an_incomplete_copy(tmp_path, capsys, fixture_sized_bccd):
    cache = tmp_path / "cache"
    fetch.main(["bccd", "--cache", str(cache), "--url", _bccd_archive(tmp_path / "a.tar.gz")])
    stamps = {p: os.stat(cache / "bccd" / p).st_mtime_ns for p in _files(cache / "bccd")}
    fetch.main(["bccd", "--cache", str(cache), "--url", f"file://{tmp_path}/gone.tar.gz"])
    assert "already complete" in capsys.readouterr().out
    assert {p: os.stat(cache / "bccd" / p).st_mtime_ns for p in stamps} == stamps
    os.remove(cache / "bccd" / "BCCD" / "JPEGImages" / "BloodImage_00390.jpg")  # interrupted
    fetch.main(["bccd", "--cache", str(cache), "--url", _bccd_archive(tmp_path / "a.tar.gz")])
    assert "written to" in capsys.readouterr().out
    assert os.path.isfile(cache / "bccd" / "BCCD" / "JPEGImages" / "BloodImage_00390.jpg")


def test_fetch_default_cache_is_pgdet_data_else_home_cache(tmp_path, monkeypatch, capsys,
                                                           fixture_sized_bccd):
    url = _bccd_archive(tmp_path / "a.tar.gz")
    fetch.main(["bccd", "--url", url])
    home_cache = tmp_path / "home" / ".cache" / "pgdet" / "data"
    assert os.path.isfile(home_cache / "bccd" / "LICENSE")
    assert "PGDET_DATA=" not in capsys.readouterr().out  # found there without it
    monkeypatch.setenv("PGDET_DATA", str(tmp_path / "elsewhere"))
    fetch.main(["bccd", "--url", url])
    assert os.path.isfile(tmp_path / "elsewhere" / "bccd" / "LICENSE")


def test_an_archive_that_is_not_all_of_bccd_is_refused_in_one_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as info:  # BCCD's real sizes: the fixture has 6 of 364
        fetch.main(["bccd", "--cache", str(cache), "--url", _bccd_archive(tmp_path / "a.tar.gz")])
    message = str(info.value.code)
    assert message.startswith("error: bccd from file://") and "\n" not in message
    assert "BCCD/Annotations holds 6 .xml files, BCCD has 364" in message
    assert os.listdir(cache) == []  # nothing moved into place, nothing left over


def test_a_failed_download_names_the_url_in_one_line(tmp_path):
    url = f"file://{tmp_path}/no_such_archive.tar.gz"
    with pytest.raises(SystemExit) as info:
        fetch.main(["bccd", "--cache", str(tmp_path / "cache"), "--url", url])
    message = str(info.value.code)
    assert message.startswith(f"error: cannot download {url}") and "\n" not in message
    assert "--url file://" in message


def test_members_outside_the_top_folder_are_not_written(tmp_path, fixture_sized_bccd):
    url = _bccd_archive(tmp_path / "a.tar.gz", extra=[(f"{BCCD_TOP}/../../escaped.txt", b"x"),
                                                      ("other_top/file.txt", b"y")])
    fetch.main(["bccd", "--cache", str(tmp_path / "c1" / "c2"), "--url", url])
    found = {os.path.relpath(os.path.join(d, f), tmp_path)
             for d, _, files in os.walk(tmp_path) for f in files}
    assert not any(p.endswith(("escaped.txt", "other_top/file.txt")) for p in found)


# ---------------------------------------------------------------- the data root


def test_data_root_paths_resolve_in_order(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data" / "bccd" / "BCCD"  # ../shared/data from the project
    home = tmp_path / "home" / ".cache" / "pgdet" / "data" / "bccd" / "BCCD"
    env = tmp_path / "env" / "bccd" / "BCCD"
    assert data_root.resolve_data_path("$PGDET_DATA/bccd/BCCD") == str(home)  # nothing: fetch's
    assert data_root.resolve_data_path("relative/BCCD") == "relative/BCCD"
    for found in (shared, home):
        found.mkdir(parents=True)
        assert data_root.resolve_data_path("$PGDET_DATA/bccd/BCCD") == str(found)
    monkeypatch.setenv("PGDET_DATA", str(tmp_path / "env"))
    assert data_root.resolve_data_path("$PGDET_DATA/bccd/BCCD") == str(home)  # env lacks it
    env.mkdir(parents=True)
    assert data_root.resolve_data_path("$PGDET_DATA/bccd/BCCD") == str(env)


def test_config_finds_fetched_bccd_through_pgdet_data(tmp_path, monkeypatch, fixture_sized_bccd):
    cache = tmp_path / "cache"
    fetch.main(["bccd", "--cache", str(cache), "--url", _bccd_archive(tmp_path / "a.tar.gz")])
    monkeypatch.setenv("PGDET_DATA", str(cache))
    cfg = build_cfg("bccd/frcnn_MobileNetV2_FPN_bccd.yaml", [])
    pdata.register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get("bccd_test").dirname == str(cache / "bccd" / "BCCD")
    assert [r["image_id"] for r in DatasetCatalog.get("bccd_test")] == [
        "BloodImage_00157", "BloodImage_00390"]  # the fixture's test.txt
    pdata.check_datasets_exist(["bccd_trainval", "bccd_test"])


def test_missing_bccd_says_which_dataset_and_the_fetch_command(tmp_path):
    cfg = build_cfg("bccd/frcnn_MobileNetV2_FPN_bccd.yaml", [])
    with pytest.raises(pdata.DatasetNotFoundError) as info:
        pdata.register_datasets_from_cfg(cfg)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Dataset 'bccd_trainval'")
    assert "Fetch it with `pgdet-fetch-data bccd`" in message
    assert str(tmp_path / "home" / ".cache" / "pgdet" / "data" / "bccd" / "BCCD") in message


def test_training_without_bccd_stops_at_start_with_one_line(tmp_path):
    """pgdet-train's start (setup): an error the entry point prints as one line, no traceback."""
    args = SimpleNamespace(config_file="bccd/frcnn_MobileNetV2_FPN_bccd.yaml", eval_only=False,
                           resume=False, num_gpus=1, machine_rank=0,
                           opts=["OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(USER_ERRORS) as info:
        setup(args)
    message = str(info.value)
    assert "\n" not in message and message.startswith("Dataset 'bccd_trainval'")
    assert "pgdet-fetch-data bccd" in message


# ---------------------------------------------------------------- ASL: YOLO txt → COCO json


def _image(path, size):
    Image.new("RGB", (size, size), (90, 120, 150)).save(path)


def test_yolo_labels_become_coco_boxes_in_pixels(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _image(tmp_path / "images" / "b.jpg", 400)
    _image(tmp_path / "images" / "a.jpg", 416)
    _image(tmp_path / "images" / "c.jpg", 416)  # no label file: no box
    (tmp_path / "labels" / "b.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    (tmp_path / "labels" / "a.txt").write_text("25 0.3 0.6 0.2 0.1\n")
    coco = fetch_asl.yolo_to_coco(str(tmp_path / "images"), str(tmp_path / "labels"))
    assert coco["images"] == [
        {"id": 1, "file_name": "a.jpg", "width": 416, "height": 416},
        {"id": 2, "file_name": "b.jpg", "width": 400, "height": 400},
        {"id": 3, "file_name": "c.jpg", "width": 416, "height": 416}]
    # a: x = (0.3 - 0.1) * 416, y = (0.6 - 0.05) * 416, w = 0.2 * 416, h = 0.1 * 416 (Z = 26)
    # b: x = (0.5 - 0.125) * 400, y = (0.5 - 0.25) * 400, w = 100, h = 200 (A = 1)
    assert coco["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 26, "bbox": [83.2, 228.8, 83.2, 41.6],
         "area": 3461.12, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [150.0, 100.0, 100.0, 200.0],
         "area": 20000.0, "iscrowd": 0}]
    assert [c["name"] for c in coco["categories"]] == [chr(ord("A") + i) for i in range(26)]
    assert [c["id"] for c in coco["categories"]] == list(range(1, 27))


def _asl_archive(path, tmp_path):
    """A stand-in for the ASL repository's archive: one image per split, one label each."""
    export = f"{ASL_TOP}/datasets/american_sign_language"
    with tarfile.open(path, "w:gz") as tar:
        for index, split in enumerate(("train", "valid", "test")):
            image = tmp_path / f"{split}.jpg"
            _image(image, 416)
            tar.add(image, f"{export}/{split}/images/{split}_{index}.jpg")
            _add_bytes(tar, f"{export}/{split}/labels/{split}_{index}.txt",
                       f"{index} 0.5 0.5 0.5 0.25\n".encode())
        _add_bytes(tar, f"{export}/README.roboflow.txt", b"American Sign Language Letters\n")
        _add_bytes(tar, f"{ASL_TOP}/datasets/pistols/x.txt", b"another dataset\n")
    return f"file://{path}"


def test_fetch_asl_writes_coco_json_that_configs_register(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_asl, "SPLIT_SIZES", {"train": 1, "valid": 1, "test": 1})
    cache = tmp_path / "cache"
    fetch.main(["asl", "--cache", str(cache), "--url", _asl_archive(tmp_path / "a.tar.gz",
                                                                       tmp_path)])
    assert sorted(os.listdir(cache / "asl")) == [
        "README.roboflow.txt", "test", "test.json", "train", "train.json", "valid", "valid.json"]
    oracle = COCO(str(cache / "asl" / "valid.json"))
    (ann,) = oracle.loadAnns(oracle.getAnnIds())
    assert ann["bbox"] == [104.0, 156.0, 208.0, 104.0] and ann["category_id"] == 2  # letter B
    monkeypatch.setenv("PGDET_DATA", str(cache))
    cfg = build_cfg("demo/frcnn_MobileNetV2_FPN_demo.yaml", [
        "DATASETS.COCO_JSONS", "['asl_valid:$PGDET_DATA/asl/valid.json:$PGDET_DATA/asl/valid']",
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "('asl_valid',)"])
    pdata.register_datasets_from_cfg(cfg)
    pdata.check_datasets_exist(["asl_valid"])
    (record,) = DatasetCatalog.get("asl_valid")
    assert record["file_name"] == str(cache / "asl" / "valid" / "valid_1.jpg")
    assert MetadataCatalog.get("asl_valid").thing_classes[1] == "B"


def test_missing_asl_names_its_fetch_command(tmp_path):
    cfg = build_cfg("demo/frcnn_MobileNetV2_FPN_demo.yaml", [
        "DATASETS.COCO_JSONS", "['asl_test:$PGDET_DATA/asl/test.json:$PGDET_DATA/asl/test']",
        "DATASETS.TEST", "('asl_test',)"])
    with pytest.raises(pdata.DatasetNotFoundError, match="Fetch it with `pgdet-fetch-data asl`"):
        pdata.register_datasets_from_cfg(cfg)
