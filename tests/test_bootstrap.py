"""The set-up script refuses a disk too small for torch before it creates anything.

CI once failed half-way through installing torch ('No space left on device'); the script now
checks the free space first. The free space it reports is checked against `shutil.disk_usage`.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

BOOTSTRAP = Path(__file__).resolve().parents[1] / "scripts" / "bootstrap.sh"


def test_bootstrap_refuses_a_full_disk_before_creating_the_venv(tmp_path):
    venv = tmp_path / "not" / "yet" / "venv"
    env = dict(os.environ, PGDET_VENV=str(venv), PGDET_MIN_FREE_GB="1000000")
    done = subprocess.run(["bash", str(BOOTSTRAP)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    reported = re.search(r"error: (\d+) GB free on the disk of (\S+);", done.stdout)
    assert reported, done.stdout
    assert reported.group(2) == str(tmp_path)
    assert int(reported.group(1)) == shutil.disk_usage(tmp_path).free // 2**30
    assert not venv.parent.exists()
