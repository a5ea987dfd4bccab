"""pyproject.toml as pip installs it: the console scripts, the configs shipped as package data,
the licence.

Cheap checks, without installing anything: each console script's target is imported and run
with --help from a folder outside the repository, and a wheel is built from a copy of the project
(setuptools of this venv, no network) and its file list compared with the config folder.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "pgdet" / "configs"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
# every shipped config, found by walking the folder
SHIPPED = sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*")
                 if p.suffix in (".yaml", ".py") and p.name != "__init__.py")


def _outside_env():
    """Run with this checkout's pgdet (not whichever is installed), one thread."""
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=python_path, OMP_NUM_THREADS="1")


def test_the_five_commands_are_declared():
    assert set(SCRIPTS) == {"pgdet-train", "pgdet-lazy-train", "pgdet-table1", "pgdet-predict",
                            "pgdet-fetch-data"}
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert {"pretrained", "bench", "test", "lazy"} <= set(PYPROJECT["project"]
                                                         ["optional-dependencies"])
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_target_runs_help_from_any_folder(script, tmp_path):
    module, function = SCRIPTS[script].split(":")
    # what the console-script wrapper pip writes does: import the target, call it, argv[0] the name
    code = (f"import sys; sys.argv = [{script!r}, '--help']; from {module} import {function}; "
            f"sys.exit({function}())")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_outside_env(),
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {script} ")
    assert "config" in done.stdout


def test_wheel_ships_every_config_and_the_commands(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "LICENSE", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "pgdet", source / "pgdet",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pgdet-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert {f"pgdet/configs/{name}" for name in SHIPPED} <= names
    assert "pgdet/configs/README.md" in names and f"{info}/licenses/LICENSE" in names
    assert {"pgdet/protocol/cli.py", "pgdet/tools/predict.py"} <= names
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in entry_points
