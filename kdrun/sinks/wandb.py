"""Weights & Biases, without ever hanging, prompting or crashing a run: online only with an API
key and a reachable server (checked in ~2 s, where wandb itself would wait ~100 s), otherwise
offline in the run directory (sync later with `wandb sync`)."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from kdrun.config import to_dict

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


class WandbSink:
    def __init__(self, run):
        self.run = run

    def log(self, metrics: dict[str, Any]) -> None:
        self.run.log(metrics)

    def results(self, results: dict[str, Any]) -> None:
        self.run.summary.update(results)

    def images(self, images: dict[str, Path]) -> None:
        import wandb

        self.run.log({key: wandb.Image(str(path)) for key, path in images.items()})

    def close(self) -> None:
        self.run.finish()


def open_wandb_sink(cfg: DictConfig, run_dir: Path, sweep_group: str | None,
                    run_name: str | None) -> WandbSink | None:
    """The W&B sink, or None (with a warning) when W&B cannot start; the run goes on."""
    mode = choose_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    try:
        import wandb

        run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=mode,
            group=cfg.logger.group or sweep_group, tags=list(cfg.logger.tags),
            config=to_dict(cfg), dir=str(run_dir), name=run_name,
            settings=wandb.Settings(console="off", silent=True, init_timeout=30))
    except Exception as err:  # W&B must never take a run down with it
        log.warning("W&B could not start (%s: %s): continuing without it",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
    if mode == "offline":
        log.info("W&B offline run in %s", run.dir)
    return WandbSink(run)
