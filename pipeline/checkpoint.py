"""Checkpoints of both layouts: naming, listing, retention, and safe (weights-only) loading.

Two layouts live under `<run_dir>/checkpoints/`:
- plain (single process, DDP): one file `step-<9 digits>.pt`, written to a temporary file in the
  same folder, fsynced, then renamed over its final name, so a crash mid-write never leaves a
  partial file under a valid name;
- deepspeed: a folder `ds-step-<9 digits>/` in DeepSpeed's own format (one ZeRO shard per rank),
  written by DeepSpeed; its `mp_rank_00_model_states.pt` holds the whole module and our state.
Only this module knows the names: resume, retention, `pipeline eval` and the W&B artifact all
go through it. Loading uses torch.load(weights_only=True): a pickle that would run code is refused.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline import faults

FORMAT_VERSION = 1
PLAIN, DEEPSPEED = "plain", "deepspeed"
_NAMES = {PLAIN: re.compile(r"^step-(\d{9})\.pt$"), DEEPSPEED: re.compile(r"^ds-step-(\d{9})$")}
DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"  # the module and the client state, in every ZeRO stage
_CLIENT_KEYS = ("progress", "scheduler", "ema", "rng", "wandb_run_id", "config", "classes")  # what the Trainer adds


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, global_step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{global_step:09d}.pt"


def deepspeed_tag(global_step: int) -> str:
    return f"ds-step-{global_step:09d}"


def partial_tag(tag: str) -> str:
    """Where DeepSpeed writes a save before it is complete (the name matches no layout)."""
    return f".{tag}.partial"


def remove_partial_deepspeed_saves(run_dir: str | Path) -> None:
    for partial in checkpoint_dir(run_dir).glob(".ds-step-*.partial"):  # left by a job killed mid-save
        shutil.rmtree(partial, ignore_errors=True)


def complete_deepspeed_save(run_dir: str | Path, tag: str) -> Path:
    """Rename a finished DeepSpeed save to its tag: only then can resume or eval pick it."""
    folder = checkpoint_dir(run_dir)
    final = folder / tag
    if final.exists():  # the same step saved again (a stop signal at an epoch's last step)
        shutil.rmtree(final)
    os.replace(folder / partial_tag(tag), final)
    _fsync_dir(folder)
    return final


# DeepSpeed's own classes that its ZeRO optimizer files hold besides tensors (found with
# torch.serialization.get_unsafe_globals_in_checkpoint on DeepSpeed 0.19.8 saves): a stage enum,
# the loss scalers and a (numel, start) record, numbers only. They are allowed for the
# weights-only check of a DeepSpeed tag; no other class is.
_DEEPSPEED_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum",
                      "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                      "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                      "deepspeed.utils.tensor_fragment.fragment_address")


def deepspeed_safe_globals() -> list:
    """The DeepSpeed classes above, imported (those this DeepSpeed version has)."""
    import importlib

    allowed = []
    for name in _DEEPSPEED_GLOBALS:
        module, _, cls = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), cls))
        except (ImportError, AttributeError):
            pass
    return allowed


def verify_deepspeed_files(tag_dir: Path) -> None:
    """Every file of a DeepSpeed tag must load weights-only (DeepSpeed itself loads them with
    weights_only=False, which would run a hostile pickle's code)."""
    files = sorted(Path(tag_dir).glob("*.pt"))
    if not files:
        raise CheckpointError(f"checkpoint {tag_dir} holds no DeepSpeed files")
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        for path in files:
            _load_file(path)


def layout_of(path: str | Path) -> str | None:
    name = Path(path).name
    return next((layout for layout, pattern in _NAMES.items() if pattern.match(name)), None)


def _step_of(path: Path) -> int:
    return int(_NAMES[layout_of(path)].match(path.name).group(1))


def list_checkpoints(run_dir: str | Path, layout: str | None = None) -> list[Path]:
    """Checkpoints of a run (one layout or both), newest first; temporary files never match."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if layout_of(p) and (layout is None or layout_of(p) == layout)]
    return sorted(found, key=_step_of, reverse=True)


def resolve(path: str | Path) -> Path:
    """What a user may give for a checkpoint: a run directory (its newest checkpoint, either layout),
    or a step-*.pt file or ds-step-* folder itself."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint or run directory not found: {path}")
    if path.is_dir() and layout_of(path) is None:
        found = list_checkpoints(path)
        if not found:
            raise CheckpointError(f"no checkpoint in run directory {path} (looked for step-*.pt files and "
                                  f"ds-step-*/ folders in {checkpoint_dir(path)})")
        return found[0]
    return path


def prune(run_dir: str | Path, keep: int, layout: str) -> None:
    """Keep the newest `keep` (at least one) checkpoints of a layout: trainer.keep_checkpoints."""
    for old in list_checkpoints(run_dir, layout)[max(1, keep):]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make a rename in it durable
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict, run_dir: str | Path, global_step: int) -> Path:
    """Write a plain-layout checkpoint atomically (retention is `prune`'s job, for both layouts)."""
    path = checkpoint_path(run_dir, global_step)
    atomic_save({"format": FORMAT_VERSION, **state}, path)
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load one checkpoint of either layout, weights-only; raises CheckpointError with the reason.

    A DeepSpeed folder gives its module as "model" and our state beside it (enough to evaluate or
    export; resuming a DeepSpeed run goes through DeepSpeed's loader for the optimizer shards).
    """
    path = Path(path)
    if path.is_dir():
        state = _load_file(path / DEEPSPEED_MODEL_FILE)
        if "module" not in state or "progress" not in state:
            raise CheckpointError(f"checkpoint {path} is not a pipeline DeepSpeed checkpoint (no module or progress)")
        return {"format": FORMAT_VERSION, "model": state["module"], **{k: state[k] for k in _CLIENT_KEYS if k in state}}
    state = _load_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a pipeline checkpoint (format {state.get('format') if isinstance(state, dict) else '?'})")
    return state


def _load_file(path: Path):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's refusal names the offending class on an "Unsupported global" line: report that one.
        first = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else type(exc).__name__)
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(f"refusing checkpoint {path}: it holds objects that weights-only loading does not allow ({first[:200]})") from None
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {first[:200]}") from None
    return state


def load_latest(run_dir: str | Path, load=load_checkpoint, layout: str | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint that `load` accepts; a corrupt newer one is skipped with a warning."""
    for path in list_checkpoints(run_dir, layout):
        try:
            return path, load(path)
        except CheckpointError as exc:
            print(f"warning: {exc}; falling back to an older checkpoint", file=sys.stderr, flush=True)
    return None
