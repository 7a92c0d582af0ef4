"""Read an offline W&B run (run-<id>.wandb) without a network.

The file is W&B's transaction log: a 7-byte header (":W&B", magic, version) followed by the
LevelDB log format (32 KiB blocks; each chunk has a 4-byte CRC, 2-byte length, 1-byte type:
1 full, 2 first, 3 middle, 4 last). Each reassembled record is a protobuf
`wandb.proto.wandb_internal_pb2.Record`; we keep history rows, config and summary.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # block trailer padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += room  # zero padding to the block end
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    alerts: list[dict] = field(default_factory=list)  # {"title", "text", "level"}


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(path: Path) -> OfflineRun:
    """path: an offline-run-* folder or its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    if path.is_dir():
        files = sorted(path.glob("*.wandb"))
        if not files:
            raise FileNotFoundError(f"no .wandb file in {path}")
        path = files[0]
    # run-<id>.wandb: the id is in the name too (a process killed early may not have flushed its run record).
    run = OfflineRun(run_id=path.stem.removeprefix("run-"))
    for raw in iter_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run.history.append({_item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            for item in record.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_item_key(item)] = json.loads(item.value_json)
        elif kind == "alert":
            run.alerts.append({"title": record.alert.title, "text": record.alert.text, "level": record.alert.level})
        elif kind == "run":
            run.run_id, run.group = record.run.run_id or run.run_id, record.run.run_group
            for item in record.run.config.update:
                run.config[_item_key(item)] = json.loads(item.value_json)
    return run
