"""pgdet's config files, shipped inside the package so that they resolve by name from any folder.

As detectron2's ``model_zoo.get_config_file`` does for its own configs: a name is a path under
this folder (``"bccd/pg_MobileNetV2_FPN_bccd.yaml"``, ``"lazy/pg_fcos_R_50_FPN_1x.py"``; the
folder's README.md lists them). The files stay files, so a YAML's relative ``_BASE_`` resolves
next to it whether it was named or given as a path. The entry points take either
(:func:`resolve_config_file`): a path that exists is used as it is, anything else is looked up
as a name.
"""
import difflib
from pathlib import Path
from typing import List

CONFIG_ROOT = Path(__file__).resolve().parent
CONFIG_SUFFIXES = (".yaml", ".py")  # YAML configs and LazyConfig files


class ConfigNotFoundError(FileNotFoundError):
    """Neither an existing file nor the name of a config pgdet ships."""


def config_names() -> List[str]:
    """Every shipped config's name (its path under this folder, with "/"), sorted."""
    return sorted(
        path.relative_to(CONFIG_ROOT).as_posix() for path in CONFIG_ROOT.rglob("*")
        if path.suffix in CONFIG_SUFFIXES and path.is_file() and path.name != "__init__.py"
    )


def get_config_file(name: str) -> str:
    """The absolute path of the shipped config `name`, e.g.
    ``"bccd/pg_MobileNetV2_FPN_bccd.yaml"``; a :class:`ConfigNotFoundError` naming the closest
    names otherwise."""
    names = config_names()
    # "pgdet/configs/<name>", a path from the repository root, names the same file
    key = name.replace("\\", "/").removeprefix("pgdet/configs/")
    if key in names:
        return str(CONFIG_ROOT / key)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else (
        " Names are paths under pgdet/configs, e.g. demo/pg_MobileNetV2_FPN_demo.yaml; "
        f"pgdet.configs.config_names() lists all {len(names)}.")
    raise ConfigNotFoundError(f"Config file not found: {name} is neither a file nor the name of "
                              f"a config pgdet ships.{hint}")


def resolve_config_file(path_or_name: str) -> str:
    """`path_or_name` if it is an existing file, else the shipped config of that name."""
    return path_or_name if Path(path_or_name).is_file() else get_config_file(path_or_name)
