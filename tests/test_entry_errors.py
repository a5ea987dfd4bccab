"""What every command prints besides its own output: no warnings from pgdet's dependencies that a
user can do nothing about, and no config that needs yaml.unsafe_load."""
import logging
import os
import subprocess
import sys
from pathlib import Path

from test_coco_json import write_tiny_coco

from pgdet.engine import build_cfg

REPO = Path(__file__).resolve().parents[1]
# the start of each warning as torch, setuptools and fvcore print it (torch's CUDA line only on
# a machine with a CUDA toolkit and no GPU)
THIRD_PARTY = ("`torch.jit.script` is deprecated", "pkg_resources is deprecated",
               "torch.meshgrid: in an upcoming release", "yaml.unsafe_load",
               "No CUDA runtime is found")


def _train_net(*argv):
    run = subprocess.run([sys.executable, "train_net.py", *argv], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run.returncode, run.stdout + run.stderr, run.stderr


def test_commands_print_no_third_party_warnings(tmp_path):
    """An evaluation of the demo RetinaNet (its anchors call torch.meshgrid; its config had a
    YAML expression) on 4 tiny images, and a model-zoo config (detectron2's model zoo imports
    pkg_resources) stopped by a bad input, with its one-line error."""
    write_tiny_coco(str(tmp_path))
    code, output, _ = _train_net(
        "--config-file", "pgdet/configs/demo/retinanet_MobileNetV2_FPN_demo.yaml", "--eval-only",
        "DATASETS.COCO_JSONS", f"['entry_val:{tmp_path / 'val.json'}:{tmp_path / 'images'}']",
        "DATASETS.TEST", "('entry_val',)", "MODEL.RETINANET.NUM_CLASSES", "3",
        "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "eval"))
    assert code == 0, output[-3000:]
    assert "bbox" in output and not [w for w in THIRD_PARTY if w in output]

    code, output, stderr = _train_net(
        "--config-file", "pgdet/configs/model_zoo/pg_faster_rcnn_R_50_FPN_3x.yaml", "--eval-only",
        "DATASETS.TEST", "()", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "zoo"))
    assert code != 0 and not [w for w in THIRD_PARTY if w in output]
    assert stderr.strip().splitlines() == [
        "error: --eval-only with an empty DATASETS.TEST would evaluate nothing: name the datasets "
        "to evaluate, e.g. DATASETS.TEST \"('pgdet_demo_val',)\"."]


def test_retinanet_anchor_sizes_are_literal_numbers():
    """The configs wrote RetinaNet's 3 scales per octave as a Python expression, which fvcore
    loads only with yaml.unsafe_load ("Your machine may be at risk"), on every run."""
    expected = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [16, 32, 64, 128, 256]]
    for config in ("bccd/Base-BCCD-RetinaNet-MobileNetV2-FPN.yaml", "demo/Base-Demo-RetinaNet.yaml"):
        sizes = build_cfg(str(REPO / "pgdet" / "configs" / config)).MODEL.ANCHOR_GENERATOR.SIZES
        assert sizes == expected, config
    files = [p for p in (REPO / "pgdet" / "configs").rglob("*") if p.is_file()]
    assert len(files) > 40 and not [p for p in files if "!!python" in p.read_text()]


def test_torch_fx_tracing_notice_is_silenced():
    """detectron2's ROIPooler calls torch.fx's is_fx_tracing, which logs a notice once per
    process (`make demo` printed it at its pictures step): torch's own function, uncached, into a
    handler on its logger, records nothing once pgdet is imported."""
    import pgdet  # noqa: F401  (installs the filters)
    from torch.fx import _symbolic_trace

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(_symbolic_trace.__name__)
    logger.addHandler(handler)
    try:
        _symbolic_trace.is_fx_tracing_warning.__wrapped__()
    finally:
        logger.removeHandler(handler)
    assert not records
