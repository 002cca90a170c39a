"""Checkpoint files: written atomically (a crash never leaves half a file), read with
weights_only=True (a checkpoint cannot run code). Under torch.distributed only rank 0 writes:
every rank holds the same weights."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from kdrun.errors import CheckpointError
from kdrun.runtime import distributed

TEMP_PREFIX = "."  # a file being written is .<name>.tmp<pid> beside its final name


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Written to a temporary file, flushed to the disk, then renamed over `path`: a crash at
    any moment leaves the old file or the new one, never a mix."""
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files a killed save left in `folder` (they are never read)."""
    if distributed.is_main() and folder.is_dir():
        for tmp in folder.glob(f"{TEMP_PREFIX}*.tmp*"):
            tmp.unlink(missing_ok=True)


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, or a one-line CheckpointError naming the file and what is wrong
    with it. Only tensors and plain data load: a file that holds anything else is refused, as
    unpickling it could run code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: give a file in it "
                              "(e.g. checkpoints/student.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: give the path of a checkpoint file")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"GLOBAL (\S+)", str(err))
        if code:
            raise CheckpointError(f"{path} holds Python objects besides weights ({code[1]}), "
                                  "which kdrun refuses to load: loading them could run code. "
                                  "Use a checkpoint kdrun wrote") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable as one): give "
                              "a file kdrun wrote") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint "
                              f"({(str(err) or type(err).__name__).splitlines()[0][:80]}): "
                              "copy it again, or give another file") from None
