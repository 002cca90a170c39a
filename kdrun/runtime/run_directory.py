"""One run per run directory. Two runs writing one directory would interleave their
metrics.jsonl rows and leave the last one's results.json, with nothing to say so; Hydra's
default directory names a second, so a shell loop or a job array can collide without anyone
choosing to. A run therefore holds the directory's lock while it writes there (the operating
system releases it when the process ends, however it ends: a killed run leaves no lock that
blocks), and a new run refuses a directory that already holds another run's record unless it
resumes that run."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from kdrun.errors import RunDirectoryTaken
from kdrun.runtime import distributed

LOCK_FILE = ".kdrun.lock"
OWNER_FILE = ".kdrun-owner.json"  # who holds the lock: process, host, start, command


def earlier_record(run_dir: Path) -> str | None:
    """The file that shows another run already wrote `run_dir`, or None."""
    for name in ("results.json", "metrics.jsonl"):
        if (run_dir / name).is_file():
            return name
    checkpoint = min((run_dir / "checkpoints").glob("*.pt"), default=None)
    return None if checkpoint is None else f"checkpoints/{checkpoint.name}"


@contextlib.contextmanager
def claimed(run_dir: Path, resume: bool):
    """`run_dir`, held by this run until the block ends. RunDirectoryTaken (one line, and
    nothing written there) when another live run holds it, or when it holds an earlier run's
    record and this run does not resume it. Under torch.distributed rank 0 claims for all."""
    if not distributed.is_main():
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirectoryTaken(f"{run_dir} is in use by another run ({_owner(run_dir)}): "
                                "wait for it to end, or choose another hydra.run.dir") from None
    owner = run_dir / OWNER_FILE
    try:
        record = None if resume else earlier_record(run_dir)
        if record:
            raise RunDirectoryTaken(f"{run_dir} already holds a run ({record}): continue it "
                                    f"with trainer.resume=true hydra.run.dir={run_dir}, or "
                                    "choose another hydra.run.dir")
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": [_program(), *sys.argv[1:]]}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _program() -> str:
    name = Path(sys.argv[0]).name
    return "python -m kdrun" if name == "__main__.py" else name


def _owner(run_dir: Path) -> str:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
        return (f"process {owner['pid']} on {owner['host']}, started {owner['started']}: "
                f"{' '.join(owner['command'])}")
    except (OSError, ValueError, KeyError, TypeError):  # it is starting, or it is ending
        return "its process is starting or ending"
