import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data.demo import make_demo_data

REPO = Path(__file__).resolve().parents[1]
_CURRENT = {"slow": False}


@pytest.fixture(autouse=True)
def _note_slow_marker(request):
    """`make test-fast` (-m "not slow") must stay free of subprocess runs: run_cli checks this."""
    _CURRENT["slow"] = request.node.get_closest_marker("slow") is not None
    yield


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small demo dataset: 10 classes x 40 train, x 13 val (130 val: not a multiple of 2 or 3 x batch)."""
    return make_demo_data(tmp_path_factory.mktemp("data") / "demo", train_per_class=40, val_per_class=13, size=48)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, check: bool = False,
            quick: bool = False) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS`. quick=True: the command ends before any training (a refused config)."""
    assert quick or _CURRENT["slow"], "a test that trains in a subprocess must be marked @pytest.mark.slow"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Overrides for a quick CPU run on the demo data: a CIFAR-sized ResNet on 32 px crops.
FAST = ["model.name=resnet20", "data.image_size=32", "data.batch_size=32", "data.workers=0",
        "data.backend=torchvision", "trainer.log_every=2", "logging.progress=lines"]
