"""Helpers shared by the tests (fixtures live in conftest.py)."""
import os
import subprocess
import sys
from pathlib import Path

from tests import preforked

REPO = Path(__file__).resolve().parents[1]
# Set by conftest for the running test: whether it carries the slow marker.
CURRENT = {"slow": False}


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, check: bool = False,
            quick: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in its own process: a fork of an interpreter that has imported torch
    (tests/preforked.py), or with fresh=True a new interpreter. quick=True: the command ends before any
    training (a refused config)."""
    assert quick or CURRENT["slow"], "a test that trains in a subprocess must be marked @pytest.mark.slow"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if not fresh and preforked.usable(full_env):
        proc = preforked.run(list(args), full_env, REPO, timeout)
    else:
        proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Overrides for a quick CPU run on the demo data: a CIFAR-sized ResNet on 32 px crops.
FAST = ["model.name=resnet20", "data.image_size=32", "data.batch_size=32", "data.workers=0",
        "data.backend=torchvision", "trainer.log_every=2", "logging.progress=lines"]
