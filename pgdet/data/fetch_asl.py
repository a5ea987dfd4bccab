"""American Sign Language Letters as ``pgdet-fetch-data asl`` installs it: ``<root>/asl/`` holding
``{train,valid,test}.json`` (COCO) and the images in ``{train,valid,test}/``, plus the export's
card ``README.roboflow.txt``, converted from the YOLO txt labels of the Roboflow export in the
public repository dnth/yolov5-deepsparse-blogpost (``datasets/american_sign_language/``).

Conversion (:func:`yolo_to_coco`): images in sorted file-name order get ids 1, 2, ...; their
width and height are read from the image; each label line ``class cx cy w h`` (fractions of the
image) becomes a box ``[x, y, w, h]`` in pixels, rounded to 1/100 pixel, with category id
``class + 1`` (1-26 = A-Z), ``area`` = w·h in pixels, ``iscrowd`` 0, annotation ids 1, 2, ...
"""
import json
import os
import shutil
from typing import Dict, List, Optional

from PIL import Image

FOLDER = "datasets/american_sign_language"  # in the archive (tar paths use "/")
SPLIT_SIZES: Dict[str, int] = {"train": 1512, "valid": 144, "test": 72}  # one box per image
LETTERS = [chr(ord("A") + i) for i in range(26)]
CARD = "README.roboflow.txt"
DESCRIPTION = ("American Sign Language Letters v1 (Roboflow export, public domain), boxes "
               "converted from YOLO txt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _yolo_box(line: str, width: int, height: int, label_file: str) -> List[float]:
    """``class cx cy w h`` → ``[class, x, y, w, h]`` with the box in pixels (XYWH)."""
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{label_file}: line {line!r} is not 'class cx cy w h'")
    cls, cx, cy, w, h = int(fields[0]), *map(float, fields[1:])
    if not 0 <= cls < len(LETTERS):
        raise ValueError(f"{label_file}: class {cls} is not one of the 26 letters (0-25)")
    return [cls, (cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]


def yolo_to_coco(images_dir: str, labels_dir: str) -> dict:
    """The COCO dict of the images in `images_dir` with YOLO labels in `labels_dir`
    (``<image stem>.txt``; an image without one has no box)."""
    names = sorted(n for n in os.listdir(images_dir) if n.lower().endswith(IMAGE_SUFFIXES))
    images, annotations = [], []
    for image_id, file_name in enumerate(names, 1):
        with Image.open(os.path.join(images_dir, file_name)) as image:
            width, height = image.size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        label_file = os.path.join(labels_dir, os.path.splitext(file_name)[0] + ".txt")
        lines = []
        if os.path.isfile(label_file):
            with open(label_file) as f:
                lines = [line for line in f if line.strip()]
        for line in lines:
            cls, x, y, w, h = _yolo_box(line, width, height, label_file)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": cls + 1,
                                "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "iscrowd": 0})
    categories = [{"id": i + 1, "name": letter} for i, letter in enumerate(LETTERS)]
    return {"info": {"description": DESCRIPTION}, "images": images,
            "annotations": annotations, "categories": categories}


def install_asl(top: str, dest: str) -> None:
    """Convert each split of the export below archive folder `top` into `dest`."""
    export = os.path.join(top, FOLDER)
    os.makedirs(dest)
    for split in SPLIT_SIZES:
        images_dir = os.path.join(export, split, "images")
        if not os.path.isdir(images_dir):
            continue  # verify_asl names what is missing
        coco = yolo_to_coco(images_dir, os.path.join(export, split, "labels"))
        with open(os.path.join(dest, f"{split}.json"), "w") as f:
            json.dump(coco, f)
        shutil.move(images_dir, os.path.join(dest, split))
    if os.path.isfile(os.path.join(export, CARD)):
        shutil.copy(os.path.join(export, CARD), os.path.join(dest, CARD))


def verify_asl(dest: str) -> Optional[str]:
    """What is wrong with ASL in `dest` (one sentence, paths relative to `dest`), or None when
    each split has its expected number of images, each on disk and with exactly one box."""
    for split, size in SPLIT_SIZES.items():
        json_file = os.path.join(dest, f"{split}.json")
        if not os.path.isfile(json_file):
            return f"{split}.json is missing"
        with open(json_file) as f:
            coco = json.load(f)
        if len(coco["images"]) != size or len(coco["annotations"]) != size:
            return (f"{split}.json has {len(coco['images'])} images and "
                    f"{len(coco['annotations'])} boxes, ASL's {split} has {size} of each")
        for image in coco["images"]:
            if not os.path.isfile(os.path.join(dest, split, image["file_name"])):
                return f"{split}.json names {image['file_name']}, not in {split}/"
    return None
