"""detectron2's DetectionCheckpointer, made safe to kill and safe to load.

- Killed at any moment, a run never leaves a ``last_checkpoint`` that names a half-written file:
  fvcore writes the checkpoint file first and tags it afterwards, and the tag is written here to a
  temporary file that atomically replaces the old one.
- pgdet's own ``.pth`` checkpoints hold only tensors and plain containers, so they are read with
  ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects. detectron2
  ``.pkl`` files (model-zoo weights) are pickles and still load through detectron2: trusted
  sources only.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer


class PGCheckpointer(DetectionCheckpointer):
    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        tmp = f"{tag}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(last_filename_basename)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, tag)

    def _load_file(self, filename):
        if filename.endswith(".pth"):
            with open(filename, "rb") as f:
                return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        return super()._load_file(filename)
