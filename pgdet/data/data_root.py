"""The data root: where configs find the datasets ``pgdet-fetch-data`` downloads.

Why: a config cannot name a folder of one machine. A dataset path in DATASETS.VOC_DIRS or
DATASETS.COCO_JSONS that begins with ``$PGDET_DATA/`` names a path *below* the data root, and
is looked up, in this order, under

1. ``$PGDET_DATA``, when that environment variable is set;
2. ``~/.cache/pgdet/data``, where ``pgdet-fetch-data`` writes by default;
3. ``../shared/data``, relative to the current folder (a copy beside the project's clone).

The first root holding the path wins. When none does, the path resolves under the first root
(where ``pgdet-fetch-data`` would write), and :func:`missing_data_hint` says which command fetches
it. Any other path is used as written (relative to the current folder).
"""
import os
from typing import List, Optional

PREFIX = "$PGDET_DATA/"
ENV = "PGDET_DATA"
DEFAULT_ROOT = os.path.join("~", ".cache", "pgdet", "data")
DEVELOPER_ROOT = os.path.join(os.pardir, "shared", "data")
# First folder of a data-root path → the command that fetches it (pgdet/data/fetch.py).
FETCHABLE = ("bccd", "asl")


def fetch_root() -> str:
    """Where ``pgdet-fetch-data`` writes by default: $PGDET_DATA, else ~/.cache/pgdet/data."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV) or DEFAULT_ROOT))


def data_roots() -> List[str]:
    """The folders searched for a ``$PGDET_DATA/`` path, first match wins (absolute paths)."""
    roots = [fetch_root(), os.path.abspath(os.path.expanduser(DEFAULT_ROOT)),
             os.path.abspath(DEVELOPER_ROOT)]
    return list(dict.fromkeys(roots))  # $PGDET_DATA unset: the cache is listed once


def is_data_root_path(path: str) -> bool:
    return path.startswith(PREFIX)


def resolve_data_path(path: str) -> str:
    """``$PGDET_DATA/bccd/BCCD`` → the first existing ``<root>/bccd/BCCD`` of :func:`data_roots`,
    else ``<fetch_root()>/bccd/BCCD``; any other path unchanged."""
    if not is_data_root_path(path):
        return path
    relative = path[len(PREFIX):]
    for root in data_roots():
        candidate = os.path.join(root, relative)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(fetch_root(), relative)


def missing_data_hint(path: str) -> Optional[str]:
    """What to do about data-root `path` found under no root (None when it exists or is not a
    data-root path): the fetch command of its dataset, and the folders searched."""
    if not is_data_root_path(path) or os.path.exists(resolve_data_path(path)):
        return None
    dataset = path[len(PREFIX):].split("/")[0]
    searched = ", ".join(data_roots())
    fetch = (f"Fetch it with `pgdet-fetch-data {dataset}`"
             if dataset in FETCHABLE else "Put it there")
    return (f"{path} is under none of the data roots ({searched}). {fetch}, or set {ENV} to the "
            "folder holding it (docs/datasets.md).")
