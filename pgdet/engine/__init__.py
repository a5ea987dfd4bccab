"""Training entry points: the Trainer and the config set-up of train_net.py."""
from .setup import ConfigError, build_cfg, setup
from .trainer import Trainer, default_device

__all__ = ["ConfigError", "Trainer", "build_cfg", "default_device", "setup"]
