"""Config files that inherit detectron2's model-zoo configs by name, without copying them.

A pgdet YAML may say ``_BASE_: "model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"``. The
base is then the file shipped inside the installed detectron2 (found by
``detectron2.model_zoo.get_config_file``), so a PG config fine-tunes exactly the model that the
model-zoo checkpoint was trained as; that file's own ``_BASE_`` (``../Base-RCNN-FPN.yaml``)
resolves next to it as usual. Likewise ``_BASE_: "pgdet://<name>"`` inherits a config pgdet
ships (pgdet/configs, e.g. ``pgdet://bccd/Base-BCCD-MobileNetV2-FPN.yaml``), so a user's own
YAML in any folder can extend pgdet's configs of an installed pgdet.

How: fvcore's ``CfgNode.load_yaml_with_base`` joins a relative ``_BASE_`` onto the folder of the
file naming it and calls ``cls.load_yaml_with_base`` on the result, which therefore reads
``<folder>/model_zoo://<name>``. :class:`ModelZooCfgNode` overrides that class method to map
such a path (or ``<folder>/pgdet://<name>``) to the installed file, and leaves every other path
to fvcore.
"""
import difflib
from importlib import resources
from pathlib import Path
from typing import List

from detectron2.config import CfgNode

from .configs import get_config_file as pgdet_config_file

MODEL_ZOO_SCHEME = "model_zoo://"
PGDET_SCHEME = "pgdet://"


class ModelZooConfigNotFoundError(FileNotFoundError):
    """A ``model_zoo://`` base that the installed detectron2 does not ship as a YAML file."""


def _shipped_configs() -> List[str]:
    """Names of the YAML configs inside the installed detectron2, for suggestions."""
    root = Path(str(resources.files("detectron2.model_zoo") / "configs"))
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def model_zoo_config_file(name: str) -> str:
    """The installed file of detectron2's model-zoo config `name`, e.g.
    ``"COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"``; a clear error for any other name."""
    # imported here: detectron2.model_zoo needs pkg_resources (setuptools < 81), which only
    # configs naming a model-zoo base should require
    from detectron2.model_zoo import get_config_file

    if not name.endswith(".yaml"):
        raise ModelZooConfigNotFoundError(
            f"{MODEL_ZOO_SCHEME}{name}: a _BASE_ must be a model-zoo YAML config (*.yaml); "
            "LazyConfig (.py) model-zoo configs cannot be inherited by a YAML file."
        )
    try:
        return get_config_file(name)
    except RuntimeError:  # detectron2's "<name> not available in Model Zoo!"
        close = difflib.get_close_matches(name, _shipped_configs(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelZooConfigNotFoundError(
            f"{MODEL_ZOO_SCHEME}{name}: the installed detectron2 has no such model-zoo config "
            f"(names are paths under detectron2/model_zoo/configs).{hint}"
        ) from None


class ModelZooCfgNode(CfgNode):
    """detectron2's CfgNode whose YAML files may name a model-zoo config or a config pgdet ships
    as ``_BASE_``."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe: bool = False):
        if isinstance(filename, str) and MODEL_ZOO_SCHEME in filename:
            filename = model_zoo_config_file(filename.partition(MODEL_ZOO_SCHEME)[2])
        elif isinstance(filename, str) and PGDET_SCHEME in filename:
            filename = pgdet_config_file(filename.partition(PGDET_SCHEME)[2])
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
