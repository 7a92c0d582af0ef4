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


# Seconds each heavy module took in a whole run (junit, 2-core AVX2 EPYC, 2026-12-03, with the preforked
# commands of tests/preforked.py; docs/benchmarks.md). pytest-xdist's loadscope hands whole modules to
# the workers in collection order, and by default reorders them by test count, which put the few-test
# heavy modules (the GPU check's dry run, the Slurm cluster, the fault runs) last, where one worker ran
# them while the other sat idle. `make test` passes --no-loadscope-reorder and these go first,
# heaviest first (longest processing time first: near the best split of the work over two workers);
# the rest follow in collection order.
MODULE_SECONDS = {"tests/test_elastic.py": 274, "tests/slurm/test_slurm.py": 267, "tests/test_distributed.py": 267,
                  "tests/test_faults.py": 255, "tests/test_gpu_check.py": 202,
                  "tests/test_object_store.py": 150, "tests/test_train.py": 98,
                  "tests/test_experiments.py": 81, "tests/test_tracking.py": 55, "tests/test_modern_recipes.py": 51,
                  "tests/test_numerics.py": 42, "tests/test_runlock.py": 40, "tests/test_export.py": 39}


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.nodeid.split("::")[0], 0))  # stable: in-module order kept


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`make test-fast` (-m "not slow") must stay free of subprocess runs: run_cli checks this. A hook,
    not a fixture, so that module fixtures which train (set up before any function fixture) see it."""
    CURRENT["slow"] = item.get_closest_marker("slow") is not None


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset: 10 classes x 40 train, x 13 val (130 val: not a multiple of 2 or 3 x batch)."""
    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", train_per_class=40, val_per_class=13, size=48)
