"""Checkpoint files: written atomically (a crash never leaves half a file), read with
weights_only=True (a checkpoint cannot run code). Under torch.distributed only rank 0 writes:
every rank holds the same weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kdrun.runtime import distributed


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
