"""What train_net.py (YAML configs) and lazy_train_net.py (LazyConfigs) both check and say when a
run starts, with the key names of each path: the device line, the initial weights (a missing file,
a download that fails) and the warning for a PG stage without a trained model.

Why here: the two paths must say the same things, and the weights must be checked before the
model and the data are built, not minutes later when the checkpointer reads them.
"""
import logging
import os
from urllib.parse import urlparse

from detectron2.utils.file_io import PathManager

from ..config_error import ConfigError
from .trainer import default_device

logger = logging.getLogger("pgdet")


def log_device(device: str, amp: bool) -> None:
    """Say so when the run is on CPU because no GPU is visible (configs say cuda)."""
    if device == "cpu" and default_device() == "cpu":
        logger.info("No GPU visible: running on CPU%s.", "" if amp else " without AMP")


def resumes_from_checkpoint(output_dir: str, resume: bool) -> bool:
    """True if ``--resume`` will load the last checkpoint of `output_dir` instead of the initial
    weights (detectron2 resumes from the file named by ``last_checkpoint``)."""
    return resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def check_weights(weights: str, key: str, assign: str) -> None:
    """The initial weights `weights`, read from config key `key`, are there: a local file exists;
    a URL (``detectron2://...``, ``https://...``) is downloaded now, into the cache where the
    checkpointer will find it. `assign` shows how to set the key on the command line, with {} for
    the value: ``"MODEL.WEIGHTS {}"``, ``"train.init_checkpoint={}"``.

    Raises ConfigError naming the file (without network access: the file and how to pass a
    local copy instead of the raw URLError).
    """
    if not weights:
        return
    if "://" not in weights:
        if not os.path.isfile(weights):
            raise ConfigError(
                f"{key} file not found: {weights}. A PG config starts from the baseline's final "
                f"weights: train the baseline first, or pass {assign.format('<path>')}."
            )
        return
    url = urlparse(weights)._replace(query="").geturl()  # detectron2's checkpointer drops ?...
    download_log = logging.getLogger("iopath.common.download")
    level = download_log.level
    download_log.setLevel(logging.CRITICAL)  # its "Failed to download" would repeat ours
    try:
        PathManager.get_local_path(url)
    except OSError as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigError(
            f"Cannot download {key} {weights} ({reason}). Download it where there is network "
            f"access and pass the local file: {assign.format('/path/to/file.pkl')}."
        ) from None
    finally:
        download_log.setLevel(level)


def warn_pg_without_weights(key: str, assign: str, output_key: str) -> None:
    """The loud warning of a policy-gradient stage started from no trained weights (`key`,
    `assign` as for :func:`check_weights`; `output_key` is where runs write their files)."""
    logger.warning(
        "\n%s\nPolicy-gradient training is starting without %s.\nThe paper fine-tunes a "
        "*converged* baseline: train the baseline config first, then\npass %s.\n%s",
        "!" * 78, key, assign.format(f"<baseline {output_key}>/model_final.pth"), "!" * 78,
    )
