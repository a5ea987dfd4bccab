"""``pgdet-predict``: run a trained detector on images, draw its detections and save them as COCO
results, as detectron2's demo/demo.py does for images.

    pgdet-predict --config-file demo/pg_MobileNetV2_FPN_demo.yaml \\
        --weights output/demo/finetune_pg/model_final.pth --input 'photos/*.jpg' --output seen/

--config-file takes a path or the name of a config pgdet ships (pgdet/configs); --input takes
image files, folders (the images in them) and glob patterns. Written into --output:

- each image under its own file name, with the detections scoring above --score-thresh drawn
  by detectron2's ``Visualizer``, labelled with the class names of the config's DATASETS.TEST[0]
  when that dataset can be registered (pgdet's built-in ones, DATASETS.VOC_DIRS / COCO_JSONS,
  detectron2's), with class ids otherwise;
- predictions.json: ``{image path as found: [{"category_id", "bbox": [x, y, w, h], "score"},
  ...]}``, the same detections in COCO's results format (plus "segmentation" for a mask model),
  category ids the dataset's own (a COCO json's ids, as detectron2's COCOEvaluator writes
  them; 0..K-1 for datasets without such ids).
"""
import argparse
import glob
import json
import logging
import os
import sys
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from ..data import register_datasets_from_cfg
from ..engine import build_cfg
from ..engine.entry import USER_ERRORS

logger = logging.getLogger("pgdet")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
RESULTS_FILE = "predictions.json"


class PredictInputError(ValueError):
    """An --input or --output that pgdet-predict cannot use; the message says which."""


def find_images(inputs: Sequence[str]) -> List[str]:
    """The image files that `inputs` name: files as given, the images in each folder (sorted),
    the files matching each glob pattern (sorted)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
        if not found:
            raise PredictInputError(f"--input {item}: no such image file, and no folder of "
                                    "images or glob pattern matching any")
        paths += found
    return paths


def prediction_config(config_file: str, weights: str = None, score_thresh: float = 0.5,
                      opts: Sequence[str] = ()):
    """The config of `config_file` + `opts` with `weights` (None: the config's MODEL.WEIGHTS), its
    detectors' score thresholds at `score_thresh` (as detectron2's demo sets them), frozen."""
    cfg = build_cfg(config_file, [*opts, *(["MODEL.WEIGHTS", weights] if weights else [])])
    path = cfg.MODEL.WEIGHTS
    if path and "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path} (--weights, or MODEL.WEIGHTS "
                                f"of {config_file}).")
    if not path:
        logger.warning("No weights: the detector is randomly initialised.")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = score_thresh
    cfg.freeze()
    return cfg


def dataset_metadata(cfg):
    """The metadata of DATASETS.TEST[0] (class names, COCO category ids), registered from the
    config; empty metadata, with a warning saying why, when it cannot be registered."""
    if not cfg.DATASETS.TEST:
        return Metadata()
    name = cfg.DATASETS.TEST[0]
    try:
        register_datasets_from_cfg(cfg)
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset {name!r} is not registered")
        metadata = MetadataCatalog.get(name)
        if not metadata.get("thing_classes"):
            DatasetCatalog.get(name)  # a COCO json sets its classes and ids when it is read
        return metadata
    except (*USER_ERRORS, KeyError) as e:
        logger.warning("Class names of %s unavailable (%s): drawing class ids.", name, e)
        return Metadata()


def predict_images(cfg, image_paths: Sequence[str], output_dir: str) -> Dict[str, List[dict]]:
    """Write each image with its drawn detections and predictions.json into `output_dir` (module
    docstring); return what predictions.json holds."""
    outputs = [os.path.join(output_dir, os.path.basename(p)) for p in image_paths]
    if len(set(outputs)) < len(outputs):
        raise PredictInputError("two input images have the same file name; their pictures "
                                "would overwrite each other in --output. Predict them apart.")
    if any(os.path.abspath(o) == os.path.abspath(p) for o, p in zip(outputs, image_paths)):
        raise PredictInputError(f"--output {output_dir} holds the input images, which the "
                                "pictures would overwrite; choose another folder.")
    metadata = dataset_metadata(cfg)
    to_dataset_id = {contiguous: dataset_id for dataset_id, contiguous
                     in metadata.get("thing_dataset_id_to_contiguous_id", {}).items()}
    predictor = DefaultPredictor(cfg)
    os.makedirs(output_dir, exist_ok=True)
    results = {}
    for path, output in zip(image_paths, outputs):
        try:
            # DefaultPredictor takes BGR and converts to INPUT.FORMAT itself
            image = read_image(path, format="BGR")
        except OSError as e:
            raise PredictInputError(f"cannot read image {path}: {e}") from None
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        Image.fromarray(drawing.get_image()).save(output)
        detections = instances_to_coco_json(instances, img_id=None)
        for detection in detections:
            del detection["image_id"]
            detection["category_id"] = to_dataset_id.get(detection["category_id"],
                                                         detection["category_id"])
        results[path] = detections
    with open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
        json.dump(results, f)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="path, or name of a config pgdet ships")
    parser.add_argument("--weights", help="model weights (default: the config's MODEL.WEIGHTS)")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders of images, glob patterns")
    parser.add_argument("--output", required=True, help="folder for the pictures and "
                        f"{RESULTS_FILE}")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="detections scoring above it are drawn and saved (default 0.5)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        cfg = prediction_config(args.config_file, args.weights, args.score_thresh, args.opts)
        images = find_images(args.input)
        results = predict_images(cfg, images, args.output)
    except (*USER_ERRORS, PredictInputError) as e:
        sys.exit(f"error: {e}")
    count = sum(len(d) for d in results.values())
    print(f"{len(results)} images with their {count} detections (score > {args.score_thresh}) "
          f"drawn in {args.output}; COCO results in {os.path.join(args.output, RESULTS_FILE)}")


if __name__ == "__main__":
    main()
