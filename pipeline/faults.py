"""Fault injection for the fault-tolerance tests (and for rehearsing failures on a real cluster).

Off unless a PIPELINE_FAULT_* variable is set; each check is a dict lookup on the hot path.
  PIPELINE_FAULT_RANK=r                    limit the faults below to global rank r
  PIPELINE_FAULT_RAISE_AT_STEP=k           raise RuntimeError before optimizer step k
  PIPELINE_FAULT_STALL_AT_STEP=k           sleep forever before step k (a hung rank)
  PIPELINE_FAULT_NAN_FROM_STEP=k           make the loss NaN from step k on
  PIPELINE_FAULT_SLOW_CHECKPOINT=s         sleep s seconds after writing a checkpoint's temp file,
                                           before the rename (a reliable window to kill the writer)
  PIPELINE_FAULT_CHECKPOINT_ERRNO=n        fail checkpoint writes with OSError(n) (28 = ENOSPC)
  PIPELINE_FAULT_SLOW_BATCH=s              sleep s seconds in each training batch fetch (a starved loader)
  PIPELINE_FAULT_SLOW_PREPARE=s            sleep s seconds per image `pipeline prepare` writes (a window to kill it)
  PIPELINE_FAULT_DATA_SOURCE_AT=k          raise in DALI's file source when it reads its k-th batch
                                           (counted per process; a failing reader thread)
"""
from __future__ import annotations

import os
import time

_ENV = os.environ


def _for_me() -> bool:
    rank = _ENV.get("PIPELINE_FAULT_RANK")
    return rank is None or rank == _ENV.get("RANK", "0")


def _step_var(name: str) -> int | None:
    value = _ENV.get(name)
    return int(value) if value is not None and _for_me() else None


def before_step(step: int) -> None:
    if (k := _step_var("PIPELINE_FAULT_RAISE_AT_STEP")) is not None and step == k:
        raise RuntimeError(f"injected fault at step {step}")
    if (k := _step_var("PIPELINE_FAULT_STALL_AT_STEP")) is not None and step == k:
        while True:
            time.sleep(3600)


def slow_batch() -> None:
    if "PIPELINE_FAULT_SLOW_BATCH" in _ENV and _for_me():
        time.sleep(float(_ENV["PIPELINE_FAULT_SLOW_BATCH"]))


def nan_loss(step: int) -> bool:
    k = _step_var("PIPELINE_FAULT_NAN_FROM_STEP")
    return k is not None and step >= k


def prepare_image() -> None:
    if "PIPELINE_FAULT_SLOW_PREPARE" in _ENV:
        time.sleep(float(_ENV["PIPELINE_FAULT_SLOW_PREPARE"]))


def checkpoint_written() -> None:
    if "PIPELINE_FAULT_SLOW_CHECKPOINT" in _ENV:
        time.sleep(float(_ENV["PIPELINE_FAULT_SLOW_CHECKPOINT"]))


def checkpoint_write_error() -> None:
    if "PIPELINE_FAULT_CHECKPOINT_ERRNO" in _ENV:
        errno = int(_ENV["PIPELINE_FAULT_CHECKPOINT_ERRNO"])
        raise OSError(errno, os.strerror(errno))


_source_batches = [0]


def data_source_batch() -> None:
    if "PIPELINE_FAULT_DATA_SOURCE_AT" in _ENV and _for_me():
        _source_batches[0] += 1
        if _source_batches[0] == int(_ENV["PIPELINE_FAULT_DATA_SOURCE_AT"]):
            raise RuntimeError(f"injected failure in the data source at its batch {_source_batches[0]}")
