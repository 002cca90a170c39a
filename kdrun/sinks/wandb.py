"""Weights & Biases, without ever hanging, prompting or crashing a run: online only with an API
key and a reachable server (checked in ~2 s, where wandb itself would wait ~100 s), otherwise
offline in the run directory (sync later with `wandb sync`)."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import MISSING

from kdrun.checks import require
from kdrun.config import to_dict
from kdrun.sinks.base import Logger, Start

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 2.0


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(_base_url()).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def server_reachable() -> bool:
    url = urlparse(_base_url())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=REACH_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def choose_mode(configured: str) -> str:
    """online | offline | disabled. `auto` defers to $WANDB_MODE, then to what is possible."""
    wanted = os.environ.get("WANDB_MODE", "auto") if configured == "auto" else configured
    if wanted in ("offline", "disabled", "dryrun"):
        return "offline" if wanted == "dryrun" else wanted
    if not has_api_key():
        if wanted == "online":
            log.warning("W&B online was asked for but no API key is set (wandb login or "
                        "WANDB_API_KEY): logging offline instead")
        return "offline"
    if not server_reachable():
        log.warning("W&B server %s is unreachable: logging offline (sync later with "
                    "`wandb sync`)", _base_url())
        return "offline"
    return "online"


@dataclass
class Settings:
    project: str = MISSING
    entity: str | None = MISSING
    mode: str = MISSING  # auto | online | offline | disabled
    group: str | None = MISSING  # null: the sweep directory of a multirun job
    tags: list[str] = MISSING

    def __post_init__(self):
        require(self.mode in MODES, "logger.wandb.mode", self.mode,
                f"choose one of {', '.join(MODES)}")


MODES = ("auto", "online", "offline", "disabled")


class WandbSink(Logger):
    """The step travels in the row under its counter's name (`step`, or `teacher/step` for a
    teacher trained inside the run), as the rows did before the step became an argument: the
    W&B history is unchanged."""
    Settings = Settings

    def __init__(self, run, offline: bool):
        self.run = run
        self.offline = offline

    @classmethod
    def open(cls, settings: Settings, start: Start) -> WandbSink | None:
        return open_wandb_sink(settings, start)

    def log(self, metrics: dict[str, Any], step: int, counter: str = "step") -> None:
        self.run.log({counter: step, **metrics})

    def results(self, results: dict[str, Any]) -> None:
        self.run.summary.update(results)

    def images(self, images: dict[str, Path]) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path)) for key, path in images.items()})

    def close(self) -> None:
        self.run.finish()
        if self.offline:  # the folder wandb sync takes is the one above the run's files/
            log.info("W&B run kept offline; upload it with: wandb sync %s",
                     Path(self.run.dir).parent)


RUN_ID_FILE = "wandb-run-id"  # in the run directory: a resumed run continues the same W&B run


def open_wandb_sink(settings: Settings, start: Start) -> WandbSink | None:
    """The W&B sink, or None (with a warning) when W&B cannot start; the run goes on. A server
    that accepts connections but fails the start gets the same offline fallback as one that
    cannot be reached. With trainer.resume the run continues the W&B run it started."""
    cfg, run_dir = start.cfg, start.run_dir
    mode = choose_mode(settings.mode)
    if mode == "disabled":
        return None
    try:
        import wandb

        id_file = run_dir / RUN_ID_FILE
        resuming = cfg.trainer.resume and id_file.is_file()
        run_id = id_file.read_text().strip() if resuming else secrets.token_hex(4)

        def begin(mode: str):
            return wandb.init(
                project=settings.project, entity=settings.entity, mode=mode,
                group=settings.group or start.sweep_group, tags=list(settings.tags),
                config=to_dict(cfg), dir=str(run_dir), name=start.run_name, id=run_id,
                resume="allow" if resuming else None,
                reinit="create_new",  # the members of a pack: runs open side by side
                settings=wandb.Settings(console="off", silent=True, init_timeout=30))

        try:
            run = begin(mode)
        except Exception as err:
            if mode != "online":
                raise
            log.warning("W&B online failed to start (%s: %s): logging offline instead (sync "
                        "later with `wandb sync`)", type(err).__name__, _first_line(err))
            mode = "offline"
            run = begin(mode)
        id_file.write_text(run_id + "\n")
    except Exception as err:  # W&B must never take a run down with it
        log.warning("W&B could not start (%s: %s): continuing without it",
                    type(err).__name__, _first_line(err))
        return None
    return WandbSink(run, offline=mode == "offline")


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else ""
