import os
from pathlib import Path

import pytest
import torch

from pipeline.data.demo import make_demo_data
from tests.helpers import CURRENT


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on 2 cores: one intra-op thread each, or their OpenMP threads spin against each
    # other (the subprocesses the tests start run with OMP_NUM_THREADS=1 already).
    torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`make test-fast` (-m "not slow") must stay free of subprocess runs: run_cli checks this. A hook,
    not a fixture, so that module fixtures which train (set up before any function fixture) see it."""
    CURRENT["slow"] = item.get_closest_marker("slow") is not None


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset: 10 classes x 40 train, x 13 val (130 val: not a multiple of 2 or 3 x batch)."""
    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", train_per_class=40, val_per_class=13, size=48)
