"""Checkpoints: atomic writes, keep the last K, safe (weights-only) loading with fallback.

A checkpoint is written to a temporary file in the same folder, fsynced, then renamed over its
final name, so a crash mid-write never leaves a partial file under a valid name. Loading uses
torch.load(weights_only=True): a pickle that would run code is refused.
"""
from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import faults

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, global_step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{global_step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, newest first (temporary files never match the name pattern)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)), reverse=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".step-*.tmp-*"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            faults.checkpoint_write_error()
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        faults.checkpoint_written()
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict, run_dir: str | Path, global_step: int, keep: int) -> Path:
    state = {"format": FORMAT_VERSION, **state}
    path = checkpoint_path(run_dir, global_step)
    atomic_save(state, path)
    for old in list_checkpoints(run_dir)[max(1, keep):]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint, weights-only; raises CheckpointError with the reason."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(f"refusing checkpoint {path}: it holds objects that weights-only loading does not allow ({first[:200]})") from None
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {first[:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a pipeline checkpoint (format {state.get('format') if isinstance(state, dict) else '?'})")
    return state


def load_latest(run_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads; a corrupt newer one is skipped with a warning."""
    for path in list_checkpoints(run_dir):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            print(f"warning: {exc}; falling back to an older checkpoint", file=sys.stderr, flush=True)
    return None
