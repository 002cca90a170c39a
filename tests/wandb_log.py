"""Reads back what a W&B offline run logged: its run-*.wandb file is a LevelDB-style log of
protobuf `Record`s (7-byte file header; 32 KiB blocks; records with CRC, length and type)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # ':W&B', magic, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B log"
    out, pos, pending = [], HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        pending += data[pos:pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # keys with '/' are stored split


def logged(run_dir: Path) -> dict:
    """{'history': [row, ...], 'summary': {...}, 'config': {...}} of the offline run in run_dir."""
    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    history, summary, config = [], {}, {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "run":
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
    return {"history": history, "summary": summary, "config": config}
