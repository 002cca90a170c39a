"""Checkpoint files: written atomically (a crash never leaves half a file), read with
weights_only=True (a checkpoint cannot run code), any unreadable file one line. Files that are
kept for reuse (the teacher cache) record their SHA-256 beside them, so damage done after
writing (a full disk, a killed copy, a flipped byte) is found before the file is trusted.
Under torch.distributed only rank 0 writes: every rank holds the same weights."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
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


def load(path: Path, device: torch.device | str = "cpu",
         allowed_globals: list | None = None) -> dict[str, Any]:
    """A checkpoint's contents, or a one-line CheckpointError naming the file and what is wrong
    with it. Only tensors and plain data load (and the harmless `allowed_globals` a caller
    names, torch.serialization.safe_globals' entries): a file that holds anything else is
    refused, as unpickling it could run code."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file: give a file in it "
                              "(e.g. checkpoints/student.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: give the path of a checkpoint file")
    try:
        with torch.serialization.safe_globals(allowed_globals or []):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        code = re.search(r"GLOBAL (\S+)", str(err))
        if code:
            raise CheckpointError(f"{path} holds Python objects besides weights ({code[1]}), "
                                  "which kdrun refuses to load: loading them could run code. "
                                  "Use a checkpoint kdrun wrote") from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable as one): give "
                              "a file kdrun wrote") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, UnicodeDecodeError, zipfile.BadZipFile) as err:  # a damaged file
        raise CheckpointError(f"{path} is truncated or not a PyTorch checkpoint "
                              f"({(str(err) or type(err).__name__).splitlines()[0][:80]}): "
                              "copy it again, or give another file") from None


DIGEST_SUFFIX = ".sha256"  # teacher.pt -> teacher.pt.sha256, in sha256sum's format


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def record_digest(path: Path) -> None:
    """`path`'s SHA-256 beside it (`sha256sum -c` checks it too), written atomically."""
    if not distributed.is_main():
        return
    record = digest_path(path)
    tmp = record.with_name(f"{TEMP_PREFIX}{record.name}.tmp{os.getpid()}")
    tmp.write_text(f"{sha256(path)}  {path.name}\n")
    os.replace(tmp, record)


def damage(path: Path) -> str | None:
    """Why the kept file `path` cannot be trusted, or None when it is intact: its SHA-256 is
    not the one recorded when it was written, or (a file kept before digests were recorded)
    it does not load; such a file that loads gets its digest recorded now."""
    record = digest_path(path)
    if record.is_file():
        expected = (record.read_text().split() or ["(none)"])[0]
        actual = sha256(path)
        return None if actual == expected else (f"its SHA-256 is {actual}, not {expected} as "
                                                "recorded when it was written")
    try:
        load(path)
    except CheckpointError:
        return "it does not load as a checkpoint"
    record_digest(path)
    return None
