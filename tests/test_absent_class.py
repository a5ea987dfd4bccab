"""benchmarks/absent_class.py against a hand-computed case (COCO AP by hand)."""
import json

import pytest


@pytest.fixture(scope="module")
def absent_class(benchmark_script):
    return benchmark_script("absent_class")


def _run_dir(tmp_path, detections, coco_json_dataset=False):
    """A run folder as COCOEvaluator leaves it: image 1 holds a class-1 object, image 2 a
    class-2 object, both [0, 0, 10, 10] (XYWH). With `coco_json_dataset` the test set is a
    DATASETS.COCO_JSONS entry of the run's config.yaml, and no ``_coco_format.json`` is written
    (COCOEvaluator writes none for a COCO-json dataset)."""
    folder = tmp_path / "run" / "inference" / "toy_test"
    folder.mkdir(parents=True)
    gt = {"images": [{"id": i, "width": 50, "height": 50, "file_name": f"{i}.jpg"} for i in (1, 2)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": i, "image_id": i, "category_id": i, "bbox": [0, 0, 10, 10],
                           "area": 100, "iscrowd": 0} for i in (1, 2)]}
    if coco_json_dataset:
        (tmp_path / "toy.json").write_text(json.dumps(gt))
        (tmp_path / "run" / "config.yaml").write_text(
            f"DATASETS:\n  COCO_JSONS:\n  - toy_test:{tmp_path / 'toy.json'}:{tmp_path}\n")
    else:
        (folder / "toy_test_coco_format.json").write_text(json.dumps(gt))
    (folder / "coco_instances_results.json").write_text(json.dumps(detections))
    return str(tmp_path / "run")


@pytest.mark.parametrize("coco_json_dataset", [False, True])
def test_a_confident_absent_class_detection_halves_its_class_ap(absent_class, tmp_path, capsys,
                                                                coco_json_dataset):
    """Class b: the absent-class false positive on image 1 (0.8) ranks above image 2's true
    positive (0.6): precision 1/2 at recall 1, AP_b = 0.5 at every IoU threshold; class a: 1.
    Dataset AP (1 + 0.5) / 2 = 75; without that detection 100. One of three detections
    (and of the three scoring >= 0.5) is of an absent class."""
    box = [0, 0, 10, 10]
    run = _run_dir(tmp_path, [
        {"image_id": 1, "category_id": 1, "bbox": box, "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": box, "score": 0.6},
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.8},
        {"image_id": 2, "category_id": 2, "bbox": [30, 30, 10, 10], "score": 0.1},
    ], coco_json_dataset)
    gt, results = absent_class._run_files(run)
    with open(results) as f:
        stats = absent_class.absent_class_stats(gt, json.load(f))
    # the fourth detection, a false positive of a present class below the true positive,
    # leaves AP_b at 0.5
    assert stats.detections == 4 and stats.absent_share == pytest.approx(25.0)
    assert stats.seen == 3 and stats.seen_absent_share == pytest.approx(100 / 3)
    assert stats.ap == pytest.approx(75.0) and stats.ap50 == pytest.approx(75.0)
    assert stats.ap_without_absent == pytest.approx(100.0)
    absent_class.main([run])
    assert "| 75.00 | 100.00 (+25.00) |" in capsys.readouterr().out


def test_absent_class_credit_summary_by_hand(benchmark_script):
    """Two absent-class boxes (A −0.2 and +0.4) and three others (A 0.1, 0, −0.3)."""
    credit = benchmark_script("absent_class_credit")
    rows = [(True, 0.9, -0.2), (True, 0.3, 0.4), (False, 0.8, 0.1), (False, 0.6, 0.0),
            (False, 0.2, -0.3)]
    absent, other = credit.summary(rows).splitlines()
    assert absent.startswith("absent-class boxes of D: 2 (1 at score >= 0.5)")
    assert "A < 0: 0.500 | A > 0: 0.500 | mean A +0.1000 | mean |A| 0.3000" in absent
    assert other.startswith("other boxes of D: 3 (2 at score >= 0.5)")
    assert "A < 0: 0.333 | A > 0: 0.333 | mean A -0.0667 | mean |A| 0.1333" in other
