import pickle

import pytest
import torch

from pipeline import checkpoint as ckpt


def _state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "progress": {"global_step": step}}


def test_keeps_last_k_and_loads_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000004.pt", "step-000000003.pt"]
    path, state = ckpt.load_latest(tmp_path)
    assert state["progress"]["global_step"] == 4


def test_corrupt_newest_falls_back_with_warning(tmp_path, capsys):
    ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=3)
    newest = ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=3)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as after a crash outside our writer
    path, state = ckpt.load_latest(tmp_path)
    assert state["progress"]["global_step"] == 1
    assert "step-000000002.pt is unreadable or truncated" in capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 5)
    path.parent.mkdir(parents=True)
    torch.save({"format": ckpt.FORMAT_VERSION, "payload": _Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match="refusing checkpoint"):
        ckpt.load_checkpoint(path)


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=2)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000001.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
