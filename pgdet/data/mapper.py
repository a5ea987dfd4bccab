"""detectron2's DatasetMapper, except that an unreadable image names its file and image id.

Why: inside a DataLoader worker, detectron2's mapper turns a missing or corrupt image into a bare
``FileNotFoundError`` or Pillow's "cannot identify image file <_io.BufferedReader ...>", which does
not say which dataset entry is bad.
"""
from detectron2.data import DatasetMapper


class ImageReadError(OSError):
    """An image file of a dataset that is missing or cannot be decoded."""


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's :class:`DatasetMapper`, with read failures re-raised as :class:`ImageReadError`.

    Built like the parent: ``CheckedDatasetMapper(cfg, is_train=True)`` or from keyword arguments.
    The only file I/O of the parent's ``__call__`` is reading the image (and an optional semantic
    segmentation file), so any ``OSError`` it raises is a read failure of ``file_name``.
    """

    def __call__(self, dataset_dict: dict) -> dict:
        try:
            return super().__call__(dataset_dict)
        except OSError as e:
            raise ImageReadError(
                f"Cannot read image {dataset_dict.get('file_name')!r} (dataset image_id "
                f"{dataset_dict.get('image_id')!r}): {type(e).__name__}: {e}"
            ) from e
