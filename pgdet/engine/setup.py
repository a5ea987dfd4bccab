"""Build the config of a run from a YAML file and ``KEY VALUE`` overrides, with clear errors."""
import difflib
import re

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_pgdet_cfg
from ..config_error import ConfigError
from ..configs import ConfigNotFoundError, resolve_config_file
from ..data import check_datasets_exist, register_datasets_from_cfg
from ..model_zoo import ModelZooConfigNotFoundError
from .start_checks import (
    check_weights, log_device, resumes_from_checkpoint, warn_pg_without_weights,
)
from .trainer import default_device

WEIGHTS_ASSIGN = "MODEL.WEIGHTS {}"  # how the command line sets the initial weights


def _all_keys(cfg, prefix=""):
    for key, value in cfg.items():
        full = prefix + key
        if hasattr(value, "items"):
            yield from _all_keys(value, full + ".")
        else:
            yield full


def _unknown_key_error(cfg, error, source):
    """Turn detectron2's KeyError/AssertionError for a non-existent key into a ConfigError."""
    text = str(error).strip("'\"")
    key = text.split(":")[-1].strip()
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown config key {key!r} in {source}.{hint}")


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)"
)


def _type_error(error, source):
    """Turn yacs' "Type mismatch" ValueError (e.g. ``MODEL.PG.REWARD_SCALE 10`` for a float
    key) into a ConfigError that says how to write the value; other ValueErrors are returned
    unchanged."""
    found = _TYPE_MISMATCH.search(str(error))
    if not found:
        return error
    expected, got, default, value, key = found.groups()
    hint = f" Write it as {float(value)!r}." if (expected, got) == ("float", "int") else ""
    return ConfigError(f"Config key {key} in {source} takes a {expected} (default {default}), "
                       f"got the {got} {value}.{hint}")


def config_path(path_or_name: str) -> str:
    """The file of a config given by path or by the name of a config pgdet ships (pgdet/configs);
    a ConfigError naming the closest names otherwise."""
    try:
        return resolve_config_file(path_or_name)
    except ConfigNotFoundError as e:
        raise ConfigError(str(e)) from None


def build_cfg(config_file: str = "", opts=()):
    """The run's config: detectron2 defaults + pgdet keys + `config_file` + `opts`, not frozen.

    `config_file` is a path or the name of a config pgdet ships (pgdet/configs, e.g.
    ``"demo/pg_MobileNetV2_FPN_demo.yaml"``), and may inherit a detectron2 model-zoo config
    (``_BASE_: "model_zoo://<name>"``, pgdet/model_zoo.py). MODEL.DEVICE is switched from cuda to
    cpu when no GPU is visible, so the paper's configs run unchanged on a CPU machine.
    """
    cfg = get_pgdet_cfg()
    if config_file:
        config_file = config_path(config_file)
        try:
            cfg.merge_from_file(config_file)
        except (ModelZooConfigNotFoundError, ConfigNotFoundError) as e:
            raise ConfigError(f"{config_file} (or a file it inherits): {e}") from None
        except KeyError as e:
            raise _unknown_key_error(cfg, e, config_file) from None
        except ValueError as e:
            raise _type_error(e, config_file) from None
    if len(opts) % 2:
        raise ConfigError(f"Overrides must be KEY VALUE pairs, got an odd number: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        raise _unknown_key_error(cfg, e, "the command-line overrides") from None
    except ValueError as e:
        raise _type_error(e, "the command-line overrides") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and default_device() == "cpu":
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def setup(args):
    """Config + logging + checks of a ``train_net.py`` run (STYLE.md's ``setup(args)``): the
    datasets it uses (pgdet/data/checks.py) and its initial weights (start_checks.py). A config
    given by name is replaced by its file in `args`, which detectron2's
    ``default_setup`` reads to log it."""
    if args.config_file:
        args.config_file = config_path(args.config_file)
    cfg = build_cfg(args.config_file, args.opts)
    cfg.freeze()
    if args.eval_only and not cfg.DATASETS.TEST:
        raise ConfigError("--eval-only with an empty DATASETS.TEST would evaluate nothing: name "
                          "the datasets to evaluate, e.g. DATASETS.TEST \"('pgdet_demo_val',)\".")
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="pgdet")
    log_device(cfg.MODEL.DEVICE, cfg.SOLVER.AMP.ENABLED)
    names = list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN))
    register_datasets_from_cfg(cfg, used=names)
    check_datasets_exist(names)
    if resumes_from_checkpoint(cfg.OUTPUT_DIR, args.resume):
        return cfg
    check_weights(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS", WEIGHTS_ASSIGN)
    if cfg.MODEL.PG.ENABLED and not args.eval_only and not cfg.MODEL.WEIGHTS:
        warn_pg_without_weights("MODEL.WEIGHTS", WEIGHTS_ASSIGN, "OUTPUT_DIR")
    return cfg
