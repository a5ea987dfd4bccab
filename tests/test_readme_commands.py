"""Every command block that README.md and docs/ mark as runnable is run here, so the pages
cannot drift from the code.

How a page marks its bash blocks (the line just before the opening fence):

    <!-- runnable -->                                  run it; it must exit 0
    <!-- runnable: output/x/metrics.json has pg/baseline_reward, pg/mean_weight; output/x/y.pth -->
                                                       ... and then each file named must exist
                                                       and contain each string after "has"
    <!-- not runnable: needs GPUs and COCO -->         never run; the reason is for the reader

A ```bash block with neither marker fails `test_every_bash_block_is_marked`.

How they run: the blocks of one page run in order, in one temporary folder of that page (so a
block may use what an earlier block of its page wrote: `output/...` paths are relative to it),
each as `bash -e`, with the venv's bin first on PATH (the console scripts `pgdet-train`, ...,
as after `source .venv/bin/activate`) and this checkout first on PYTHONPATH. Nothing is written
into the repository; the folders, with their 240-330 MB checkpoints, are deleted at the end.
Pages run two at a time, one thread per process (OMP_NUM_THREADS=1). The blocks use tiny
schedules (2 iterations, 160-px images); the file takes about 3 minutes on 2 idle cores.

Not run here: `make demo` and `make test` themselves (the first takes ~14 minutes; the second is
the suite this file belongs to, which CI runs through `make test`).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not runnable|runnable)\s*(?::\s*(.*?))?\s*-->\s*$")
BLOCK_TIMEOUT = 900  # seconds; generous for a loaded machine
PARALLEL_PAGES = 2


def bash_blocks(page):
    """[(line number, marker line or None, block text)] of every ```bash block of `page`."""
    text = page.read_text()
    blocks = []
    for fence in FENCE.finditer(text):
        line = text.count("\n", 0, fence.start()) + 1
        before = text[:fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((line, before if MARKER.search(before) else None, fence.group(1)))
    return blocks


def parse_expectations(marker):
    """[(relative path, [strings it must contain])] of a runnable marker."""
    clauses = MARKER.search(marker).group(2) or ""
    expected = []
    for clause in filter(None, (c.strip() for c in clauses.split(";"))):
        path, _, wanted = clause.partition(" has ")
        expected.append((path.strip(), [w.strip() for w in wanted.split(",") if w.strip()]))
    return expected


def runnable_blocks(page):
    return [(line, marker, code) for line, marker, code in bash_blocks(page)
            if marker and MARKER.search(marker).group(1) == "runnable"]


CASES = [(page, i) for page in PAGES for i in range(len(runnable_blocks(page)))]


def block_env():
    venv_bin = os.path.dirname(sys.executable)
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""),
                PYTHONPATH=python_path, OMP_NUM_THREADS="1")


def run_page(page, folder):
    """Run the page's runnable blocks in order in `folder`; stop at the first failure.
    Returns one (exit code or None if not run, output tail, seconds) per block."""
    results = []
    for _, _, code in runnable_blocks(page):
        if results and results[-1][0] != 0:
            results.append((None, "not run: an earlier block of this page failed", 0.0))
            continue
        start = time.monotonic()
        run = subprocess.run(["bash", "-e", "-c", code], cwd=folder, env=block_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=BLOCK_TIMEOUT)
        results.append((run.returncode, run.stdout[-4000:], time.monotonic() - start))
    return results


@pytest.fixture(scope="module")
def page_runs(request):
    """{page: (folder, future of run_page)} for the pages whose blocks were selected (`-k`): all
    start at once, PARALLEL_PAGES at a time, those with the most blocks first."""
    selected = {item.callspec.params["page"] for item in request.session.items
                if "page" in getattr(getattr(item, "callspec", None), "params", {})}
    pages = sorted(selected, key=lambda p: -len(runnable_blocks(p)))
    folders = {page: tempfile.mkdtemp(prefix=f"pgdet_{page.stem}_") for page in pages}
    with ThreadPoolExecutor(PARALLEL_PAGES) as pool:
        futures = {page: (folder, pool.submit(run_page, page, folder))
                   for page, folder in folders.items()}
        yield futures
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)


def test_every_bash_block_is_marked():
    unmarked = [f"{page.relative_to(REPO)}:{line}" for page in PAGES
                for line, marker, _ in bash_blocks(page) if marker is None]
    assert not unmarked, f"bash blocks without a runnable / not runnable marker: {unmarked}"


def test_the_pages_have_runnable_blocks():
    """The marker grammar is read as intended: the README's smoke line is found, with its
    expectations."""
    line, marker, code = runnable_blocks(REPO / "README.md")[0]
    assert code.startswith("pgdet-train ")
    assert ("output/smoke_faster/metrics.json", ["pg/baseline_reward", "pg/mean_weight",
                                                 "pg/reward_time"]) in parse_expectations(marker)
    assert len(CASES) >= 10


@pytest.mark.parametrize("page,index", CASES,
                         ids=[f"{p.relative_to(REPO)}-{i}" for p, i in CASES])
def test_runnable_block(page_runs, page, index):
    line, marker, code = runnable_blocks(page)[index]
    folder, future = page_runs[page]
    returncode, output, seconds = future.result()[index]
    where = f"{page.relative_to(REPO)}:{line}"
    assert returncode == 0, f"{where} exited {returncode} after {seconds:.0f} s:\n{output}"
    for path, wanted in parse_expectations(marker):
        target = Path(folder) / path
        assert target.exists(), f"{where}: {path} was not written"
        if wanted:
            text = target.read_text()
            missing = [w for w in wanted if w not in text]
            assert not missing, f"{where}: {path} lacks {missing}"
