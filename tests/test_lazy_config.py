"""The LazyConfig path: pgdet/configs/lazy/*.py and lazy_train_net.py.

Oracles: detectron2's own new-baselines config and its checkpoint table, the YAML path's config
and messages (pgdet/configs/model_zoo/pg_mask_rcnn_R_50_FPN_3x.yaml), and pycocotools' AP of
what the predictor's own inference outputs.
"""
import importlib.util
import json
import logging
import os
import types

import pycocotools.mask as mask_util
import pytest
import torch
from detectron2 import model_zoo
from detectron2.utils.file_io import Detectron2Handler
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from omegaconf import DictConfig, ListConfig
from test_config_errors import LogMessages
from test_coco_json import write_tiny_coco
from test_pg_loss import _coco_ap

from pgdet.data import register_coco_json_dataset
from pgdet.engine import ConfigError, build_cfg, setup
from pgdet.engine.lazy import load_lazy_config
from pgdet.modeling import PGFastRCNNOutputLayers, PGROIHeads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = os.path.join(REPO, "pgdet", "configs", "lazy", "pg_mask_rcnn_R_50_FPN_100ep_LSJ.py")
ORIGINAL = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
YAML = os.path.join(REPO, "pgdet", "configs", "model_zoo", "pg_mask_rcnn_R_50_FPN_3x.yaml")
PREDICTOR = "model.roi_heads.box_predictor"
LAZY_TRAIN_NET = os.path.join(REPO, "lazy_train_net.py")
FCOS = os.path.join(REPO, "pgdet", "configs", "lazy", "pg_fcos_R_50_FPN_1x.py")


def _flatten(node, prefix=""):
    """{dotted key: value} of a LazyConfig; functions compared by their code (two loads of a
    file make two lambda objects)."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    flat = {}
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (DictConfig, ListConfig)):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value.__code__ if isinstance(value, types.FunctionType) else value
    return flat


def changed_keys(ours, original):
    """The flattened keys whose values differ between two LazyConfigs (a key missing on one side
    counts as changed), and all keys of both."""
    flat, base = _flatten(ours), _flatten(original)
    keys = flat.keys() | base.keys()
    return {k for k in keys if flat.get(k, "absent") != base.get(k, "absent")}, keys


def assert_paper_pg_stage(ours, original, batch):
    """The paper's PG stage (22.5k iterations x 16 images, lr / 10, x0.1 at 2/3) in the batch of
    the model that `ours` fine-tunes (`original`, detectron2's LazyConfig)."""
    assert ours.dataloader.train.total_batch_size == original.dataloader.train.total_batch_size
    assert ours.dataloader.train.total_batch_size == batch
    assert ours.train.max_iter * batch == 22500 * 16
    assert ours.optimizer.lr == pytest.approx(original.optimizer.lr / 10)
    schedule = instantiate(ours.lr_multiplier)
    drop = ours.train.max_iter * 2 // 3
    assert [schedule(i / ours.train.max_iter) for i in (0, drop - 1, drop)] == [1.0, 1.0, 0.1]


def test_lazy_config_is_detectron2s_model_with_pgdets_heads_and_the_pg_stage():
    ours = LazyConfig.load(LAZY)
    original = model_zoo.get_config(ORIGINAL)
    changed, keys = changed_keys(ours, original)
    assert changed == {
        "model.roi_heads._target_", f"{PREDICTOR}._target_", f"{PREDICTOR}.pg_enabled",
        f"{PREDICTOR}.pg_gamma", f"{PREDICTOR}.pg_reward_scale",
        f"{PREDICTOR}.pg_settings._target_", f"{PREDICTOR}.pg_seed", "dataloader.train.dataset._target_",
        "dataloader.train.dataset.num_classes", "dataloader.train.dataset.filter_empty",
        "dataloader.train.mapper._target_", "train.init_checkpoint", "train.output_dir",
        "train.seed", "train.max_iter", "train.eval_period", "train.checkpointer.period",
        "optimizer.lr", *{k for k in keys if k.startswith("lr_multiplier.")},
    }
    # the model-zoo checkpoint of exactly this model, as a detectron2:// URL
    weights = ours.train.init_checkpoint
    assert weights.startswith(Detectron2Handler.PREFIX)
    url = Detectron2Handler.S3_DETECTRON2_PREFIX + weights[len(Detectron2Handler.PREFIX):]
    assert url == model_zoo.get_checkpoint_url(ORIGINAL)
    assert_paper_pg_stage(ours, original, batch=64)


def test_lazy_model_has_pg_roi_heads_with_the_yaml_paths_pg_options():
    cfg = load_lazy_config(LAZY, ["train.seed=3"])
    model = instantiate(cfg.model)
    reference = instantiate(model_zoo.get_config(ORIGINAL).model)
    assert isinstance(model.roi_heads, PGROIHeads)
    predictor = model.roi_heads.box_predictor
    assert isinstance(predictor, PGFastRCNNOutputLayers)
    # no parameter added, removed or reshaped: detectron2's checkpoint loads as it is
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}
    yaml_cfg = build_cfg(YAML, ["MODEL.DEVICE", "cpu", "SEED", "3"])
    from_yaml = PGFastRCNNOutputLayers(yaml_cfg, ShapeSpec(channels=1024))
    for name in ("pg_enabled", "pg_gamma", "pg_reward_scale", "pg_settings", "pg_seed",
                 "soft_nms", "test_score_thresh", "test_nms_thresh", "test_topk_per_image"):
        assert getattr(predictor, name) == getattr(from_yaml, name), name
    assert predictor.pg_enabled and predictor.pg_seed == 3


def test_lazy_config_on_a_cpu_machine_resolves_device_amp_and_seed():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = load_lazy_config(LAZY)
    assert (cfg.train.device, cfg.train.amp.enabled) == ("cpu", False)
    assert cfg.train.seed >= 0
    assert instantiate(cfg.model.roi_heads.box_predictor).pg_seed == cfg.train.seed


@pytest.mark.parametrize("lazy, yaml", [
    (["pg_settings.num_samples=0"], ["MODEL.PG.NUM_SAMPLES", "0"]),
    (["pg_gamma=-0.5"], ["MODEL.PG.GAMMA", "-0.5"]),
    (["pg_reward_scale=-1.0"], ["MODEL.PG.REWARD_SCALE", "-1.0"]),
    (["pg_settings.iou_thresholds=[]"], ["MODEL.PG.IOU_THRESHOLDS", "[]"]),
    (["pg_settings.reward_estimator=mean"], ["MODEL.PG.REWARD_ESTIMATOR", "mean"]),
    (["pg_settings.reward_estimator=swap", "pg_settings.baseline=sampled_mean"],
     ["MODEL.PG.REWARD_ESTIMATOR", "swap", "MODEL.PG.BASELINE", "sampled_mean"]),
    (["pg_settings.suppressor_credit=true", "pg_settings.advantage_norm=batch"],
     ["MODEL.PG.SUPPRESSOR_CREDIT", "True", "MODEL.PG.ADVANTAGE_NORM", "batch"]),
    (["use_sigmoid_ce=true"], ["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", "True"]),
])
def test_invalid_lazy_pg_option_fails_with_the_yaml_message(lazy, yaml):
    cfg = load_lazy_config(LAZY, [f"{PREDICTOR}.{opt}" for opt in lazy])
    with pytest.raises(ValueError) as lazy_error:
        instantiate(cfg.model.roi_heads.box_predictor)
    yaml_cfg = build_cfg(YAML, ["MODEL.DEVICE", "cpu", *yaml])
    with pytest.raises(ValueError) as yaml_error:
        PGFastRCNNOutputLayers(yaml_cfg, ShapeSpec(channels=1024))
    assert str(lazy_error.value) == str(yaml_error.value)
    assert str(lazy_error.value).startswith("Invalid policy-gradient config:")
    assert yaml[0] in str(lazy_error.value)


def test_pg_predictor_outside_pg_roi_heads_fails_at_build_time():
    cfg = load_lazy_config(LAZY, ["model.roi_heads._target_=" + StandardROIHeads.__module__
                                  + ".StandardROIHeads"])
    from pgdet.engine.lazy import build_lazy_model

    with pytest.raises(ValueError, match="PGROIHeads"):
        build_lazy_model(cfg)


def _reward_case(predictor):
    """One 200x200 image, two objects of class 0 overlapping (IoU 0.6), one of class 1; one RoI
    on each, scored for its class (0.9, 0.8, 0.7), zero box deltas."""
    gt_boxes = torch.tensor([[20.0, 20, 120, 120], [45, 20, 145, 120], [30, 140, 90, 190]])
    gt_classes = torch.tensor([0, 0, 1])
    target = Instances((200, 200), gt_boxes=Boxes(gt_boxes), gt_classes=gt_classes)
    rois = Instances((200, 200), proposal_boxes=Boxes(gt_boxes.clone()), gt_classes=gt_classes,
                     gt_boxes=Boxes(gt_boxes.clone()))
    rois._pg_targets = target
    num_classes = predictor.num_classes
    probs = torch.full((3, num_classes + 1), 0.001)
    probs[torch.arange(3), gt_classes] = torch.tensor([0.9, 0.8, 0.7])
    probs[:, -1] = 1 - probs[:, :-1].sum(1)
    scores = probs.log()
    deltas = torch.zeros(3, num_classes * 4)
    return (scores, deltas), rois, gt_boxes, gt_classes


# COCO AP of one image = mean over its classes; finding 1 of 2 objects is 51/101 (recall 0.5
# reaches 51 of COCO's 101 recall points)
@pytest.mark.parametrize("thresholds, expected_ap", [
    (dict(), (51 / 101 + 1) / 2),  # NMS 0.5 suppresses the second object of class 0
    (dict(test_nms_thresh=0.7), 1.0),  # nothing suppressed
    (dict(test_nms_thresh=0.7, test_score_thresh=0.75), 0.5),  # class 1 below the threshold
    (dict(test_nms_thresh=0.7, test_topk_per_image=1), 51 / 101 / 2),  # the best box only
])
def test_pg_baseline_is_the_predictors_own_inference(thresholds, expected_ap):
    """Changing the predictor's test thresholds after it is built moves r' with them: r' is
    the AP of what its inference outputs (pycocotools)."""
    cfg = load_lazy_config(LAZY, [f"{PREDICTOR}.pg_settings.num_samples=2"])
    predictor = instantiate(cfg.model.roi_heads.box_predictor)
    for name, value in thresholds.items():
        setattr(predictor, name, value)
    predictions, rois, gt_boxes, gt_classes = _reward_case(predictor)
    with EventStorage() as storage:
        predictor.losses(predictions, [rois])
    baseline_reward = storage.latest()["pg/baseline_reward"][0]
    predictor.eval()
    detections = predictor.inference(predictions, [rois])[0][0]
    oracle = _coco_ap(detections.pred_boxes.tensor, detections.scores, detections.pred_classes,
                      gt_boxes, gt_classes)
    assert baseline_reward == pytest.approx(oracle, abs=1e-6)
    assert oracle == pytest.approx(expected_ap)


# R50 Mask R-CNN at 64 px on the tiny COCO export (with masks: the mask head trains), its heads
# shrunk to one 32-channel conv and few RoIs so that an iteration takes seconds on CPU.
SMALL = [
    "train.init_checkpoint=", "train.seed=0", "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=16", "model.roi_heads.box_head.conv_dims=[32]",
    "model.roi_heads.mask_head.conv_dims=[32]", "model.proposal_generator.pre_nms_topk=[100,100]",
    "model.proposal_generator.post_nms_topk=[50,50]",
    f"{PREDICTOR}.test_score_thresh=0.0",  # random weights score below detectron2's 0.05
    "dataloader.train.mapper.augmentations.0.target_height=64",
    "dataloader.train.mapper.augmentations.0.target_width=64",
    "dataloader.train.mapper.augmentations.1.crop_size=[64,64]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
    "dataloader.train.mapper.instance_mask_format=bitmask",
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
]


def _polygons_to_rle(json_file):
    """The export's polygons as RLE: the LSJ crop of polygons needs shapely (the ``lazy`` extra),
    masks (RLE, read as bitmasks) are cropped as images, so the test needs no optional package."""
    with open(json_file) as f:
        data = json.load(f)
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    for ann in data["annotations"]:
        if isinstance(ann.get("segmentation"), list):
            rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], *sizes[ann["image_id"]]))
            ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    with open(json_file, "w") as f:
        json.dump(data, f)


def test_two_training_iterations_through_lazy_train_net(tmp_path, monkeypatch):
    """The config named as a user of an installed pgdet names it, from another folder."""
    monkeypatch.chdir(tmp_path)
    write_tiny_coco(str(tmp_path))
    for split in ("train", "val"):
        _polygons_to_rle(tmp_path / f"{split}.json")
    for split in ("train", "val"):
        register_coco_json_dataset(f"lazy_{split}", str(tmp_path / f"{split}.json"),
                                   str(tmp_path / "images"))
    spec = importlib.util.spec_from_file_location("lazy_train_net", LAZY_TRAIN_NET)
    lazy_train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lazy_train_net)
    out = tmp_path / "out"
    args = default_argument_parser().parse_args([
        "--config-file", "lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py", *SMALL, "train.max_iter=2",
        f"train.output_dir={out}",
        "dataloader.train.dataset.names=lazy_train", "dataloader.test.dataset.names=lazy_val"])
    lazy_train_net.main(args)
    records = [json.loads(line) for line in (out / "metrics.json").open()]
    last = [r for r in records if r.get("iteration") == 1 and "total_loss" in r][-1]
    for key in ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        assert torch.isfinite(torch.tensor(last[key])), (key, last[key])
    logged = set().union(*records)
    assert {"pg/baseline_reward", "pg/mean_weight", "pg/reward_time"} <= logged
    assert (out / "model_final.pth").is_file()
    # evaluated at the end on the export's val json, boxes and masks
    evaluation = [r for r in records if "bbox/AP" in r]
    assert evaluation and "segm/AP" in evaluation[-1]


@pytest.mark.parametrize("config, override, nearest", [
    (FCOS, "model.pg.settings.reward_estimatr=swap", "model.pg.settings.reward_estimator"),
    (LAZY, "train.max_itr=2", "train.max_iter"),  # OmegaConf alone adds the key silently
])
def test_misspelled_lazy_override_names_the_nearest_key(config, override, nearest):
    with pytest.raises(ConfigError) as e:
        load_lazy_config(config, [override])
    message = str(e.value)
    assert f"Unknown config key '{override.split('=')[0]}'" in message
    assert f"Did you mean {nearest}" in message and "\n" not in message


def _start_messages(setup_run, args):
    collect = LogMessages(logging.INFO)
    logging.getLogger("pgdet").addHandler(collect)  # setup_logger stops propagation to root
    try:
        setup_run(args)
    finally:
        logging.getLogger("pgdet").removeHandler(collect)
    return collect.messages


def test_lazy_and_yaml_paths_say_the_same_at_start(tmp_path):
    """The CPU line (logged before pgdet's logger existed, so lost) and the warning of a PG
    stage without trained weights (missing) on the LazyConfig path, as train_net.py says them."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from pgdet.engine.lazy import lazy_setup

    write_tiny_coco(str(tmp_path))
    for split in ("train", "val"):
        register_coco_json_dataset(f"lazy_start_{split}", str(tmp_path / f"{split}.json"),
                                   str(tmp_path / "images"))
    lazy = _start_messages(lazy_setup, default_argument_parser().parse_args([
        "--config-file", LAZY, "train.init_checkpoint=", f"train.output_dir={tmp_path / 'lazy'}",
        "dataloader.train.dataset.names=lazy_start_train",
        "dataloader.test.dataset.names=lazy_start_val"]))
    yaml = _start_messages(setup, default_argument_parser().parse_args([
        "--config-file", os.path.join(REPO, "pgdet", "configs", "demo", "pg_MobileNetV2_FPN_demo.yaml"),
        "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "yaml")]))
    cpu = "No GPU visible: running on CPU without AMP."
    assert cpu in lazy and cpu in yaml
    for messages, key in ((lazy, "train.init_checkpoint"), (yaml, "MODEL.WEIGHTS")):
        assert any(f"Policy-gradient training is starting without {key}." in m for m in messages)
