"""The suite's `pipeline` commands run as forks of an interpreter that imported torch once
(tests/preforked.py). They must behave as a fresh `python -m pipeline` does: same output, exit
status, files and training numbers."""
import os
import subprocess

import pytest

from pipeline.metrics import read_metrics
from tests import preforked
from tests.helpers import FAST, run_cli


def test_environment_read_at_start_sends_a_command_to_a_fresh_interpreter(monkeypatch):
    monkeypatch.delenv("PIPELINE_TESTS_EXEC", raising=False)
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert preforked.usable(base)
    assert preforked.usable({**base, "PIPELINE_FAULT_RAISE_AT_STEP": "5"})  # read when used: fine in a fork
    assert not preforked.usable({**base, "OMP_NUM_THREADS": "2"})  # libgomp read it as torch loaded
    assert not preforked.usable({**base, "PYTHONHASHSEED": "7"})
    monkeypatch.setenv("PIPELINE_TESTS_EXEC", "1")
    assert not preforked.usable(base)


def _forks() -> int:
    return preforked._server.forks if preforked._server else 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PIPELINE_TESTS_EXEC") == "1", reason="every command runs fresh")
def test_forked_command_behaves_as_a_fresh_interpreter(tmp_path, demo_data):
    assert preforked.usable({**os.environ, "OMP_NUM_THREADS": "1"})  # else both ways below would be fresh
    forks = _forks()
    refused = [run_cli("train", "model.nme=resnet20", quick=True, fresh=fresh) for fresh in (True, False)]
    assert refused[0].returncode == refused[1].returncode == 2
    assert refused[0].stdout == refused[1].stdout and refused[0].stderr == refused[1].stderr

    runs = {}
    for fresh in (True, False):
        run = tmp_path / ("fresh" if fresh else "fork")
        proc = run_cli("train", *FAST, f"data.path={demo_data}", f"trainer.run_dir={run}", "trainer.epochs=1",
                       "data.workers=2", check=True, fresh=fresh)  # loader workers: forks of the fork
        assert f"run directory {run}" in proc.stdout
        runs[fresh] = [(r["step"], r.get("train/loss"), r.get("val/top1")) for r in read_metrics(run)]
    assert runs[True] == runs[False]  # bit for bit
    assert _forks() == forks + 2  # the refused config and the training: forks, the others fresh

    with pytest.raises(subprocess.TimeoutExpired):
        run_cli("train", *FAST, "data.backend=synthetic", f"trainer.run_dir={tmp_path / 'long'}",
                "trainer.epochs=1000", timeout=5)
    assert run_cli("plan", "--config", "configs/imagenet/resnet50.yaml", quick=True).returncode == 0  # still serving
