#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with everything pgdet needs.
#
# Idempotent: a second run checks a stamp and the imports and returns in seconds.
# detectron2 is taken from, in order of preference:
#   1. an existing install visible to the venv's python (a user's own build);
#   2. upstream detectron2 from git, when GitHub answers within a short timeout
#      (needs a compiler; builds the CUDA/C++ ops where available);
#   3. the pure-Python sources of upstream detectron2 shipped in the PyPI wheel
#      `sal-detectron2==0.7.2` (upstream commit a59f0563), whose compiled `_C`
#      is not needed: torchvision provides ROIAlign/NMS, COCO evaluation uses pycocotools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PGDET_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.pgdet-ready"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
log() { echo "[bootstrap] $*"; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(cat "$ROOT/pyproject.toml" "$0" | sha1sum)" ] \
   && "$PY" -c "import torch, torchvision, detectron2, pgdet, pytest, timm" 2>/dev/null; then
  log "environment ready ($VENV)"
  exit 0
fi

# torch's x86_64 wheel with its CUDA libraries fills ~5.6 GB of the venv, and a test run writes
# up to ~1 GB of checkpoints: refuse early, with the numbers, rather than fail half-installed.
MIN_FREE_GB="${PGDET_MIN_FREE_GB:-8}"
need_torch=1
[ -x "$PY" ] && "$PY" -c "import torch, torchvision" 2>/dev/null && need_torch=0
if [ "$need_torch" = 1 ]; then
  probe="$VENV"; while [ ! -d "$probe" ]; do probe="$(dirname "$probe")"; done
  free_gb=$(( $(df -Pk "$probe" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
  if [ "$free_gb" -lt "$MIN_FREE_GB" ]; then
    log "error: ${free_gb} GB free on the disk of $probe; installing torch and running the tests"
    log "needs about ${MIN_FREE_GB} GB. Free some space, or point PGDET_VENV at a larger disk"
    log "(PGDET_MIN_FREE_GB lowers the threshold if you know better)."
    exit 1
  fi
fi

if [ ! -x "$PY" ]; then
  log "creating virtual environment in $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade "pip>=23" >/dev/null 2>&1
fi

# pip's own output, minus the warnings some machines' pip configs print for every package
pipi() { "$PY" -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }; }

if [ "$need_torch" = 1 ]; then
  log "installing $TORCH_SPEC"
  pipi $TORCH_SPEC
fi
# detectron2.model_zoo imports pkg_resources, which setuptools>=81 no longer ships.
pipi "setuptools<81" wheel

if "$PY" -c "import detectron2" 2>/dev/null; then
  log "using existing detectron2: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
elif timeout 15 git ls-remote --heads https://github.com/facebookresearch/detectron2.git >/dev/null 2>&1; then
  log "building upstream detectron2 from git"
  pipi --no-build-isolation "git+https://github.com/facebookresearch/detectron2.git"
else
  log "GitHub unreachable: installing detectron2 sources from PyPI sal-detectron2==0.7.2"
  tmp="$(mktemp -d)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$tmp" "sal-detectron2==0.7.2"
  whl="$(ls "$tmp"/*.whl)"
  # The wheel is tagged cp310 only because of its compiled _C, which pgdet never loads.
  pure="$tmp/sal_detectron2-0.7.2-py3-none-any.whl"
  mv "$whl" "$pure"
  pipi --no-deps "$pure"
  rm -rf "$tmp"
  # Its metadata pins numpy<2 wrongly and omits fvcore and iopath: install the real needs.
  pipi "numpy>=1.24" fvcore iopath pycocotools "Pillow>=7.1" matplotlib termcolor \
       yacs tabulate cloudpickle tqdm tensorboard "omegaconf>=2.1" "hydra-core>=1.1" black packaging
fi

log "installing pgdet (editable) with its test, pretrained and lazy extras"
pipi -e "$ROOT[test,pretrained,lazy]"
"$PY" -c "import torch, torchvision, detectron2, pgdet" 
cat "$ROOT/pyproject.toml" "$0" | sha1sum > "$STAMP"
log "environment ready ($VENV)"
