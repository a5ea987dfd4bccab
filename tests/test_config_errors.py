"""Bad configs fail early with a message that names the key and says what to change."""
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from test_coco_json import write_tiny_coco

from pgdet.engine import ConfigError, Trainer, build_cfg, setup
from pgdet.engine.entry import USER_ERRORS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "pgdet", "configs", "demo", "frcnn_MobileNetV2_FPN_demo.yaml")


def test_unknown_key_on_command_line_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as e:
        build_cfg(DEMO, ["MODEL.PG.GAMA", "0.0"])
    assert "MODEL.PG.GAMA" in str(e.value) and "MODEL.PG.GAMMA" in str(e.value)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{DEMO}"\nMODEL:\n  PG:\n    NUM_SAMPLE: 3\n')
    with pytest.raises(ConfigError) as e:
        build_cfg(str(bad))
    assert "NUM_SAMPLE" in str(e.value) and str(bad) in str(e.value)


def test_integer_for_a_float_key_says_how_to_write_it(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_cfg(DEMO, ["MODEL.PG.REWARD_SCALE", "10"])
    message = str(e.value)
    assert "MODEL.PG.REWARD_SCALE" in message and "takes a float" in message
    assert "Write it as 10.0" in message
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{DEMO}"\nMODEL:\n  PG:\n    NUM_SAMPLES: "ten"\n')
    with pytest.raises(ConfigError) as e:
        build_cfg(str(bad))
    assert "MODEL.PG.NUM_SAMPLES" in str(e.value) and str(bad) in str(e.value)
    assert build_cfg(DEMO, ["MODEL.PG.REWARD_SCALE", "10.0"]).MODEL.PG.REWARD_SCALE == 10.0


def test_train_net_reports_unknown_key_without_traceback():
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", DEMO, "MODEL.ROI_HEADS.NUM_CLASS", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "Unknown config key 'MODEL.ROI_HEADS.NUM_CLASS'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "opts,key",
    [
        (["MODEL.PG.NUM_SAMPLES", "0"], "MODEL.PG.NUM_SAMPLES"),
        (["MODEL.PG.GAMMA", "-0.5"], "MODEL.PG.GAMMA"),
        (["MODEL.PG.IOU_THRESHOLDS", "[]"], "MODEL.PG.IOU_THRESHOLDS"),
        (["MODEL.PG.REWARD_ESTIMATOR", "mean"], "MODEL.PG.REWARD_ESTIMATOR"),
        (["MODEL.PG.BASELINE", "zero"], "MODEL.PG.BASELINE"),
        (["MODEL.PG.REWARD_ESTIMATOR", "swap", "MODEL.PG.BASELINE", "sampled_mean"],
         "MODEL.PG.BASELINE nms"),
        (["MODEL.PG.ADVANTAGE_NORM", "batch"], "MODEL.PG.ADVANTAGE_NORM"),
        (["MODEL.PG.REWARD_SCOPE", "batch"], "MODEL.PG.REWARD_SCOPE"),
        (["MODEL.PG.REWARD_MEMORY_IMAGES", "-1"], "MODEL.PG.REWARD_MEMORY_IMAGES"),
        (["MODEL.PG.SUPPRESSOR_CREDIT", "True"], "MODEL.PG.REWARD_ESTIMATOR swap"),
        (["MODEL.PG.REWARD_ESTIMATOR", "reinforce", "MODEL.PG.NUM_SAMPLES", "1"],
         "MODEL.PG.NUM_SAMPLES must be >= 2"),
        (["MODEL.SOFT_NMS.METHOD", "hard"], "MODEL.SOFT_NMS.METHOD"),
        (["MODEL.SOFT_NMS.SIGMA", "0.0"], "MODEL.SOFT_NMS.SIGMA"),
        (["MODEL.ROI_HEADS.NAME", "OHEMROIHeads", "MODEL.OHEM.POOL_SIZE_PER_IMAGE", "100"],
         "MODEL.OHEM"),
        (["MODEL.ROI_HEADS.NAME", "StandardROIHeads"], "PGROIHeads"),
    ],
)
def test_invalid_options_fail_at_build_time(opts, key):
    cfg = build_cfg(DEMO, ["MODEL.PG.ENABLED", "True", *opts])
    with pytest.raises(ValueError) as e:
        Trainer.build_model(cfg)
    assert key in str(e.value)


class LogMessages(logging.Handler):
    """Collects the messages logged at `level` or above (what a user sees in the log)."""

    def __init__(self, level=logging.WARNING):
        super().__init__(level)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_pg_stage_without_weights_warns_loudly(tmp_path):
    args = SimpleNamespace(
        config_file=DEMO, eval_only=False, resume=False, num_gpus=1, machine_rank=0,
        opts=["MODEL.PG.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)],
    )
    collect = LogMessages()
    logging.getLogger("pgdet").addHandler(collect)  # setup_logger stops propagation to root
    try:
        setup(args)
    finally:
        logging.getLogger("pgdet").removeHandler(collect)
    assert any("without MODEL.WEIGHTS" in m for m in collect.messages)


def test_missing_weights_file_is_named(tmp_path):
    args = SimpleNamespace(
        config_file=os.path.join(REPO, "pgdet", "configs", "demo", "pg_MobileNetV2_FPN_demo.yaml"), eval_only=False,
        resume=False, num_gpus=1, machine_rank=0,
        opts=["MODEL.WEIGHTS", str(tmp_path / "nope.pth"), "OUTPUT_DIR", str(tmp_path)],
    )
    with pytest.raises(ConfigError) as e:
        setup(args)
    assert "nope.pth" in str(e.value)


def test_dockerfile_paths_exist():
    """Docker cannot run here: check every path the Dockerfile copies or runs is in the repo."""
    text = open(os.path.join(REPO, "docker", "Dockerfile")).read()
    copied = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    paths = [p for group in copied for p in group]
    assert "pgdet" in paths and "train_net.py" in paths
    for path in paths:
        assert os.path.exists(os.path.join(REPO, path)), path
    entry = [line for line in text.splitlines() if line.startswith("ENTRYPOINT")][0]
    assert "train_net.py" in entry and os.path.isfile(os.path.join(REPO, "train_net.py"))


def _args(tmp_path, *opts, config_file=DEMO, eval_only=False):
    return SimpleNamespace(config_file=config_file, eval_only=eval_only, resume=False, num_gpus=1,
                           machine_rank=0, opts=[*opts, "OUTPUT_DIR", str(tmp_path / "out")])


def test_invalid_pg_option_value_is_a_one_line_user_error():
    """As for a misspelled key: the entry point prints USER_ERRORS as one line, no traceback."""
    cfg = build_cfg(DEMO, ["MODEL.PG.REWARD_ESTIMATOR", "swapp", "MODEL.PG.GAMMA", "-1.0"])
    with pytest.raises(USER_ERRORS) as e:
        Trainer.build_model(cfg)
    message = str(e.value)
    assert "\n" not in message and "MODEL.PG.GAMMA must be >= 0" in message
    assert "MODEL.PG.REWARD_ESTIMATOR must be one of" in message and "'swapp'" in message


def test_eval_only_without_test_sets_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="DATASETS.TEST"):
        setup(_args(tmp_path, "DATASETS.TEST", "()", eval_only=True))


def test_weights_that_cannot_be_downloaded_name_the_file_and_how_to_pass_a_path(tmp_path):
    url = "http://127.0.0.1:9/x.pkl"  # nothing listens on port 9: refused at once, no network
    with pytest.raises(ConfigError) as e:
        setup(_args(tmp_path, "MODEL.WEIGHTS", url, "DATASETS.TEST", "()"))
    message = str(e.value)
    assert f"MODEL.WEIGHTS {url}" in message and "MODEL.WEIGHTS /path/to/file.pkl" in message
    assert "\n" not in message


def test_only_the_datasets_the_run_uses_are_validated(tmp_path):
    """A config inheriting BCCD's VOC_DIRS trains on a COCO json while BCCD's folder is absent."""
    write_tiny_coco(str(tmp_path))
    missing = tmp_path / "no_bccd_here"
    cfg = setup(_args(
        tmp_path, "DATASETS.VOC_DIRS", f"['bccd_unused_train:{missing}:train']",
        "DATASETS.COCO_JSONS", f"['bccd_json_train:{tmp_path / 'train.json'}:{tmp_path / 'images'}']",
        "DATASETS.TRAIN", "('bccd_json_train',)", "DATASETS.TEST", "()",
        config_file=os.path.join(REPO, "pgdet", "configs", "bccd", "frcnn_MobileNetV2_FPN_bccd.yaml")))
    assert cfg.DATASETS.TRAIN == ("bccd_json_train",)
    with pytest.raises(USER_ERRORS, match="no_bccd_here"):  # used, it is still checked
        setup(_args(tmp_path, "DATASETS.VOC_DIRS", f"['bccd_unused_train:{missing}:train']",
                    "DATASETS.TRAIN", "('bccd_unused_train',)", "DATASETS.TEST", "()"))
