"""Configs resolve by name from any folder (pgdet/configs), as detectron2's model-zoo configs do:
every name, the YAML ones with their _BASE_ chains, a LazyConfig file, and a user's YAML that
inherits one by ``pgdet://<name>``. The oracle for the names is the config folder walked here."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from pgdet.configs import ConfigNotFoundError, config_names, get_config_file
from pgdet.engine import ConfigError, build_cfg, setup
from pgdet.engine.lazy import load_lazy_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "pgdet" / "configs"
SHIPPED = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*")
                 if p.suffix in (".yaml", ".py") and p.name != "__init__.py")


def test_every_config_resolves_by_name():
    assert config_names() == SHIPPED and len(SHIPPED) > 40
    for name in SHIPPED:
        assert get_config_file(name) == str(CONFIG_DIR / name)
        # the repository path from its root names the same file
        assert get_config_file(f"pgdet/configs/{name}") == str(CONFIG_DIR / name)


def test_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    """By name, from a folder where no relative path could find them: each YAML loads as by its
    path, _BASE_ chains included; a LazyConfig file too."""
    monkeypatch.chdir(tmp_path)
    for name in SHIPPED:
        if name.endswith(".yaml"):
            assert build_cfg(name) == build_cfg(str(CONFIG_DIR / name)), name
    lazy = load_lazy_config("lazy/pg_fcos_R_50_FPN_1x.py")
    assert lazy.model._target_.__name__ == "PGFCOS" and lazy.model.pg.enabled


def test_own_yaml_inherits_a_shipped_config_by_name(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text('_BASE_: "pgdet://bccd/pg_MobileNetV2_FPN_bccd.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    expected = build_cfg("bccd/pg_MobileNetV2_FPN_bccd.yaml", ["SOLVER.MAX_ITER", "7"])
    assert build_cfg(str(own)) == expected
    own.write_text('_BASE_: "pgdet://bccd/pg_MobileNetV2_FPN_bcd.yaml"\n')
    with pytest.raises(ConfigError, match="Did you mean bccd/pg_MobileNetV2_FPN_bccd.yaml"):
        build_cfg(str(own))


def test_unknown_name_is_one_line_with_close_names():
    with pytest.raises(ConfigNotFoundError, match="Did you mean demo/pg_MobileNetV2_FPN_demo"):
        get_config_file("demo/pg_MobileNetV2_FPN_dmo.yaml")
    with pytest.raises(ConfigError) as e:
        build_cfg("no/such/config.yaml")
    assert "\n" not in str(e.value) and "no/such/config.yaml" in str(e.value)


def test_training_set_up_by_name_from_any_folder(tmp_path, monkeypatch):
    """pgdet-train's set-up with a config name: detectron2's default_setup reads and logs the
    file that args.config_file names, so the name must become that file."""
    monkeypatch.chdir(tmp_path)
    name = "demo/frcnn_MobileNetV2_FPN_demo.yaml"
    args = SimpleNamespace(config_file=name, eval_only=True, resume=False, num_gpus=1,
                           machine_rank=0, opts=["OUTPUT_DIR", str(tmp_path / "out")])
    cfg = setup(args)
    assert args.config_file == str(CONFIG_DIR / name)
    assert cfg == build_cfg(str(CONFIG_DIR / name), ["OUTPUT_DIR", str(tmp_path / "out")])
    log = (tmp_path / "out" / "log.txt").read_text()
    assert f"Contents of args.config_file={CONFIG_DIR / name}" in log
