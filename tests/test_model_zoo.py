"""``_BASE_: "model_zoo://<name>"``: a pgdet YAML inherits detectron2's own model-zoo config.

The oracle is detectron2's loader reading the installed model-zoo file by its real path
(``detectron2.model_zoo.get_config_file``), with its own relative ``_BASE_``; a model-zoo
checkpoint is stood in for by a detectron2 model's random weights in the model zoo's ``.pkl``
format (nothing may be downloaded here).
"""
import pickle

import pytest
import torch
from detectron2.modeling import build_model
from test_configs import CONFIG_DIR, flatten, model_zoo_original

import pgdet  # noqa: F401  (registers PGROIHeads, PGCascadeROIHeads)
from pgdet import get_pgdet_cfg
from pgdet.engine import ConfigError, build_cfg
from pgdet.engine.checkpoint import PGCheckpointer
from pgdet.model_zoo import ModelZooConfigNotFoundError

R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
MASK_R50_FPN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
CASCADE_MASK_R50_FPN = "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"


def pgdet_loaded(path):
    """The route of build_cfg and the README: get_pgdet_cfg() + merge_from_file."""
    cfg = get_pgdet_cfg()
    cfg.merge_from_file(str(path))
    return cfg


def model_zoo_checkpoint(name, folder):
    """detectron2's own model of model-zoo config `name` with random weights, saved as the model
    zoo saves its checkpoints (numpy arrays under "model" in a pickle): (path, state dict)."""
    source = model_zoo_original(name)
    source.MODEL.DEVICE = "cpu"
    reference = build_model(source).state_dict()
    path = folder / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in reference.items()},
                     "__author__": "Detectron2 Model Zoo"}, f)
    return str(path), reference


def test_model_zoo_base_is_detectron2s_file_with_its_own_base(tmp_path):
    (tmp_path / "child.yaml").write_text(f'_BASE_: "model_zoo://{R50_FPN}"\n')
    loaded = flatten(pgdet_loaded(tmp_path / "child.yaml"))
    assert loaded == flatten(model_zoo_original(R50_FPN))
    # set by the model-zoo file's own _BASE_, ../Base-RCNN-FPN.yaml, and by the file itself
    assert loaded["MODEL.ROI_HEADS.IN_FEATURES"] == ["p2", "p3", "p4", "p5"]
    assert loaded["SOLVER.MAX_ITER"] == 270000


def test_a_pgdet_file_inheriting_one_that_names_the_model_zoo(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "parent.yaml").write_text(
        f'_BASE_: "model_zoo://{MASK_R50_FPN}"\nMODEL:\n  ROI_HEADS:\n    NAME: "PGROIHeads"\n')
    (tmp_path / "sub" / "child.yaml").write_text(
        '_BASE_: "../parent.yaml"\nSOLVER:\n  BASE_LR: 0.002\n')
    cfg = pgdet_loaded(tmp_path / "sub" / "child.yaml")
    expected = model_zoo_original(MASK_R50_FPN)
    expected.MODEL.ROI_HEADS.NAME, expected.SOLVER.BASE_LR = "PGROIHeads", 0.002
    assert flatten(cfg) == flatten(expected)
    assert cfg.MODEL.MASK_ON


def test_unknown_model_zoo_name_names_the_file_and_suggests(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "model_zoo://COCO-Detection/faster_rcnn_R_50_FPN_9x.yaml"\n')
    with pytest.raises(ConfigError) as info:
        build_cfg(str(bad))
    message = str(info.value)
    assert str(bad) in message and "faster_rcnn_R_50_FPN_9x.yaml" in message
    assert "Did you mean COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml" in message
    with pytest.raises(ModelZooConfigNotFoundError):
        get_pgdet_cfg().merge_from_file(str(bad))


def test_lazyconfig_model_zoo_name_is_refused_clearly(tmp_path):
    bad = tmp_path / "lazy.yaml"
    bad.write_text('_BASE_: "model_zoo://new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"\n')
    with pytest.raises(ConfigError, match="LazyConfig"):
        build_cfg(str(bad))


@pytest.mark.parametrize("name, config", [
    (MASK_R50_FPN, "pg_mask_rcnn_R_50_FPN_3x.yaml"),
    (CASCADE_MASK_R50_FPN, "pg_cascade_mask_rcnn_R_50_FPN_3x.yaml"),
])
def test_a_model_zoo_checkpoint_fills_every_weight_of_the_pg_model(tmp_path, name, config):
    """detectron2's own Mask R-CNN (StandardROIHeads) or Cascade Mask R-CNN (CascadeROIHeads),
    random weights saved as the model zoo saves them, loads into the PG config's model with
    nothing missing or left over."""
    torch.manual_seed(0)
    path, reference = model_zoo_checkpoint(name, tmp_path)
    cfg = build_cfg(str(CONFIG_DIR / "model_zoo" / config),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(1)
    model = build_model(cfg)
    assert set(model.state_dict()) == set(reference)
    PGCheckpointer(model).load(path)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_a_model_zoo_checkpoint_on_other_classes_fills_all_but_the_class_layers(tmp_path, caplog):
    """On a dataset of 5 classes the 80-class checkpoint initialises everything except the
    class-specific output layers, which detectron2's checkpointer skips with a warning."""
    path, reference = model_zoo_checkpoint(R50_FPN, tmp_path)
    cfg = build_cfg(str(CONFIG_DIR / "model_zoo" / "pg_faster_rcnn_R_50_FPN_3x.yaml"),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", "5"])
    model = build_model(cfg)
    with caplog.at_level("WARNING"):
        PGCheckpointer(model).load(path)
    loaded = model.state_dict()
    class_layers = {k for k in reference if k.startswith("roi_heads.box_predictor.")}
    assert class_layers == {f"roi_heads.box_predictor.{layer}.{p}" for layer in
                            ("cls_score", "bbox_pred") for p in ("weight", "bias")}
    assert all(torch.equal(loaded[k], reference[k]) for k in set(reference) - class_layers)
    assert all(k in caplog.text for k in class_layers)

