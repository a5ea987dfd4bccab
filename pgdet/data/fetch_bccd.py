"""BCCD as ``pgdet-fetch-data bccd`` installs it: ``<root>/bccd/BCCD`` (VOC folder) and
``<root>/bccd/LICENSE`` (MIT), taken unchanged from the archive of Shenggan/BCCD_Dataset.

Why a check of the content: it is what the configs read (``$PGDET_DATA/bccd/BCCD``), and a
truncated or wrong archive must not end up there looking like the dataset.
"""
import itertools
import os
import shutil
from typing import Dict, Optional

# Images listed by each split file of BCCD (364 images; trainval = train + val).
SPLIT_SIZES: Dict[str, int] = {"train": 205, "val": 87, "test": 72, "trainval": 292}
NUM_IMAGES = 364


def install_bccd(top: str, dest: str) -> None:
    """Move the archive's ``BCCD/`` and ``LICENSE`` from its top folder `top` into `dest`."""
    os.makedirs(dest)
    for name in ("BCCD", "LICENSE"):
        if os.path.exists(os.path.join(top, name)):
            shutil.move(os.path.join(top, name), os.path.join(dest, name))


def verify_bccd(dest: str) -> Optional[str]:
    """What is wrong with BCCD in `dest` (one sentence, paths relative to `dest`), or None when
    each split file lists the expected number of images, each with its XML and JPEG, and there
    are NUM_IMAGES of each."""
    if not os.path.isfile(os.path.join(dest, "LICENSE")):
        return "LICENSE is missing"
    folders = {os.path.join("BCCD", "Annotations"): ".xml",
               os.path.join("BCCD", "JPEGImages"): ".jpg"}
    for folder, suffix in folders.items():
        path = os.path.join(dest, folder)
        count = (sum(name.endswith(suffix) for name in os.listdir(path))
                 if os.path.isdir(path) else 0)
        if count != NUM_IMAGES:
            return f"{folder} holds {count} {suffix} files, BCCD has {NUM_IMAGES}"
    for split, size in SPLIT_SIZES.items():
        split_file = os.path.join("BCCD", "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(os.path.join(dest, split_file)):
            return f"{split_file} is missing"
        with open(os.path.join(dest, split_file)) as f:
            ids = [line.strip() for line in f if line.strip()]
        if len(ids) != size:
            return f"{split_file} lists {len(ids)} images, BCCD's lists {size}"
        for file_id, (folder, suffix) in itertools.product(ids, folders.items()):
            if not os.path.isfile(os.path.join(dest, folder, file_id + suffix)):
                return f"{split_file} lists {file_id}, which has no {folder}/{file_id}{suffix}"
    return None
