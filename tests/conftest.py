"""Fixtures several test modules share."""
import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Thousands of small reward calls: intra-op threads only add waiting on a shared 2-core
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def benchmark_script():
    """Import a script of benchmarks/ (not a package) by file name: ``benchmark_script("x")``."""

    def load(name):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(REPO, "benchmarks", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
