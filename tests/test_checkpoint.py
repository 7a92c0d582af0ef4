
import pytest
import torch

from pipeline import checkpoint as ckpt


def _state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "progress": {"global_step": step}}


def test_keeps_last_k_and_loads_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(_state(step), tmp_path, step)
        ckpt.prune(tmp_path, 2, ckpt.PLAIN)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000004.pt", "step-000000003.pt"]
    path, state = ckpt.load_latest(tmp_path)
    assert state["progress"]["global_step"] == 4


def test_corrupt_newest_falls_back_with_warning(tmp_path, capsys):
    ckpt.save_checkpoint(_state(1), tmp_path, 1)
    newest = ckpt.save_checkpoint(_state(2), tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as after a crash outside our writer
    path, state = ckpt.load_latest(tmp_path)
    assert state["progress"]["global_step"] == 1
    assert "step-000000002.pt is unreadable or truncated" in capsys.readouterr().err


def test_both_layouts_listed_pruned_and_loaded(tmp_path):
    """DeepSpeed tag folders are listed, pruned (as folders) and loaded for eval like plain files."""
    folder = ckpt.checkpoint_dir(tmp_path)
    for step in (3, 5, 7):
        tag = folder / ckpt.deepspeed_tag(step)
        tag.mkdir(parents=True)
        torch.save({"module": {"w": torch.full((2,), float(step))}, "progress": {"global_step": step},
                    "optimizer": None, "ds_version": "0.19.8"}, tag / ckpt.DEEPSPEED_MODEL_FILE)
    ckpt.save_checkpoint(_state(6), tmp_path, 6)
    (folder / "latest").write_text("ds-step-000000007")  # DeepSpeed's own pointer file is not a checkpoint
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "ds-step-000000007", "step-000000006.pt", "ds-step-000000005", "ds-step-000000003"]
    ckpt.prune(tmp_path, 2, ckpt.DEEPSPEED)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path, ckpt.DEEPSPEED)] == ["ds-step-000000007", "ds-step-000000005"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path, ckpt.PLAIN)] == ["step-000000006.pt"]  # other layout kept
    path, state = ckpt.load_latest(tmp_path, layout=ckpt.DEEPSPEED)
    assert path.name == "ds-step-000000007" and state["progress"]["global_step"] == 7
    assert torch.equal(state["model"]["w"], torch.full((2,), 7.0))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 5)
    path.parent.mkdir(parents=True)
    torch.save({"format": ckpt.FORMAT_VERSION, "payload": _Evil()}, path)
    with pytest.raises(ckpt.CheckpointError, match="refusing checkpoint"):
        ckpt.load_checkpoint(path)


def test_deepspeed_tag_with_a_hostile_pickle_is_refused(tmp_path):
    """DeepSpeed would unpickle its files with weights_only=False: they are checked weights-only first."""
    tag = ckpt.checkpoint_dir(tmp_path) / ckpt.deepspeed_tag(4)
    tag.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}, "progress": {"global_step": 4}}, tag / ckpt.DEEPSPEED_MODEL_FILE)
    ckpt.verify_deepspeed_files(tag)  # a clean tag passes
    torch.save({"optimizer_state_dict": _Evil()}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(ckpt.CheckpointError, match="refusing checkpoint .*optim_states.pt.*Unsupported global"):
        ckpt.verify_deepspeed_files(tag)


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_state(1), tmp_path, 1)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(_state(2), tmp_path, 2)
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
