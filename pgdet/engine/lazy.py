"""Training and evaluation of LazyConfig models (``pgdet/configs/lazy/*.py``) for
lazy_train_net.py.

The loop is the one detectron2's ``tools/lazyconfig_train_net.py`` composes from detectron2's
trainers and hooks, with the config layout of detectron2's ``configs/common/train.py``
(``train.output_dir``, ``init_checkpoint``, ``max_iter``, ``amp``, ``ddp``, ``checkpointer``,
``eval_period``, ``log_period``, ``device``, ``seed``). What pgdet adds, as in the YAML path:

- the run seed: ``train.seed`` < 0 ("random") is drawn once, shared by the processes and
  written into the config before anything is built, so the saved config, the PG predictor's
  ``pg_seed="${train.seed}"`` and :class:`ReseedHook` (each iteration's RoI sampling and PG
  actions a function of (seed, iteration, rank)) all use the seed the log records;
- ``train.device`` cuda runs on CPU when no GPU is visible (AMP, which needs CUDA, is then off);
- an override naming a key the config does not have, nor the callable of its node as an
  argument, fails with the closest valid keys (pgdet/engine/lazy_keys.py);
- the datasets named by the data loaders and the initial weights are checked before anything is
  built, with pgdet's errors (unknown name with close matches, missing folder or file, a sample
  of missing images, a download that fails); the start is logged as in the YAML path
  (pgdet/engine/start_checks.py);
- a PG box predictor outside :class:`PGROIHeads` fails at build time, saying what to change;
- :class:`PGCheckpointer` and DDP on CPU (``create_ddp``).
"""
import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from omegaconf import OmegaConf

from ..config_error import ConfigError
from ..data import check_datasets_exist
from ..modeling import PGFastRCNNOutputLayers, PGROIHeads
from ..modeling.pg.pg_options import PGOptions
from .checkpoint import PGCheckpointer
from .lazy_keys import check_override_keys, missing_keys
from .setup import config_path
from .start_checks import (
    check_weights, log_device, resumes_from_checkpoint, warn_pg_without_weights,
)
from .trainer import ReseedHook, create_ddp, default_device, resolve_seed

logger = logging.getLogger("pgdet")
WEIGHTS_ASSIGN = "train.init_checkpoint={}"  # how the command line sets the initial weights


def load_lazy_config(config_file: str, opts=()):
    """``config_file`` (a path or the name of a config pgdet ships, pgdet/configs) with the
    ``key=value`` overrides, its seed resolved and its device available (see the module
    docstring); the processes of a run must all call this."""
    config_file = config_path(config_file)
    cfg = LazyConfig.load(config_file)
    unknown = missing_keys(cfg, opts)
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if unknown:  # an argument of its node's callable, or a misspelling
        check_override_keys(LazyConfig.load(config_file), cfg, unknown)
    if str(cfg.train.device).startswith("cuda") and default_device() == "cpu":
        cfg.train.device = "cpu"
        cfg.train.amp.enabled = False
    cfg.train.seed = resolve_seed(cfg.train.get("seed", -1))
    return cfg


def lazy_setup(args):
    """Config + logging + checks of a ``lazy_train_net.py`` run, as ``setup(args)`` of
    train_net.py: the datasets its data loaders read and its initial weights. A config given by
    name is replaced by its file in `args`, which detectron2's ``default_setup`` reads to log it."""
    args.config_file = config_path(args.config_file)
    cfg = load_lazy_config(args.config_file, args.opts)
    if args.eval_only and cfg.dataloader.get("evaluator") is None:
        raise ConfigError("--eval-only with dataloader.evaluator null would evaluate nothing: "
                          "keep the config's evaluator and name the datasets to evaluate in "
                          "dataloader.test.dataset.names.")
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="pgdet")
    log_device(cfg.train.device, cfg.train.amp.enabled)
    check_lazy_datasets(cfg, args.eval_only)
    if resumes_from_checkpoint(cfg.train.output_dir, args.resume):
        return cfg
    check_weights(cfg.train.init_checkpoint, "train.init_checkpoint", WEIGHTS_ASSIGN)
    if not args.eval_only and not cfg.train.init_checkpoint and enables_policy_gradient(cfg.model):
        warn_pg_without_weights("train.init_checkpoint", WEIGHTS_ASSIGN, "train.output_dir")
    return cfg


def enables_policy_gradient(node) -> bool:
    """Whether a LazyConfig (part) trains a part with the PG loss: a PG box predictor
    (``pg_enabled`` true) or a one-stage PG detector (``pg``, PGOptions with ``enabled`` true).
    Read from the config, as MODEL.PG.ENABLED in the YAML path, before anything is built."""
    node = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    if isinstance(node, list):
        return any(enables_policy_gradient(v) for v in node)
    if not isinstance(node, dict):
        return False
    options = node.get("_target_") in (PGOptions, f"{PGOptions.__module__}.PGOptions")
    return (node.get("pg_enabled") is True or (options and node.get("enabled") is True)
            or any(enables_policy_gradient(v) for v in node.values()))


def _dataset_names(cfg, loader: str):
    names = OmegaConf.select(cfg, f"dataloader.{loader}.dataset.names", default=None)
    return [] if names is None else [names] if isinstance(names, str) else list(names)


def check_lazy_datasets(cfg, eval_only: bool) -> None:
    """pgdet's dataset errors for the datasets the run's data loaders will read."""
    test = [] if cfg.dataloader.get("evaluator") is None else _dataset_names(cfg, "test")
    check_datasets_exist(test + ([] if eval_only else _dataset_names(cfg, "train")))


def check_pg_heads(model) -> None:
    """A PG box predictor needs PGROIHeads, which hands it each image's full ground truth."""
    heads = getattr(model, "roi_heads", None)
    predictor = getattr(heads, "box_predictor", None)
    if isinstance(predictor, PGFastRCNNOutputLayers) and predictor.pg_enabled \
            and not isinstance(heads, PGROIHeads):
        raise ConfigError(
            f"model.roi_heads.box_predictor has pg_enabled True but the ROI heads "
            f"{type(heads).__name__} cannot compute the policy gradient. Set "
            "model.roi_heads._target_ to PGROIHeads (or a subclass of it, e.g. OHEMROIHeads)."
        )


def build_lazy_model(cfg):
    """``cfg.model`` instantiated on ``cfg.train.device`` (the PG options are validated by the
    box predictor as it is built)."""
    model = instantiate(cfg.model)
    check_pg_heads(model)
    model.to(cfg.train.device)
    logger.info("Model:\n%s", model)
    return model


def do_test(cfg, model):
    """Evaluation of ``dataloader.test`` by ``dataloader.evaluator``; none without an evaluator
    (``dataloader.evaluator=null``, as ``DATASETS.TEST "()"`` in the YAML path)."""
    if cfg.dataloader.get("evaluator") is None:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def do_train(cfg, resume: bool = False):
    """Train ``cfg.model`` from ``train.init_checkpoint`` (or, with `resume`, from the last
    checkpoint in ``train.output_dir``) for ``train.max_iter`` iterations."""
    model = build_lazy_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = PGCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks([
        ReseedHook(cfg.train.seed),
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
        ) if main else None,
    ])
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # a checkpoint stores the iteration that had just finished
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer
