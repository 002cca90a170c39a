"""The sink protocol: what the trainer, the methods and the evaluation log through; and the
logger protocol, a sink a user chooses (`logger=[wandb,tensorboard]`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from kdrun.checks import NoSettings


class Sink:
    def log(self, metrics: dict[str, Any], step: int, counter: str = "step") -> None:
        """One row of metrics at `step` of the series `counter` counts ('step': the run's
        optimiser steps; 'teacher/step': those of a teacher trained inside the run)."""

    def results(self, results: dict[str, Any]) -> None:
        """The run's final metrics."""

    def images(self, images: dict[str, Path]) -> None:
        """Pictures already written to the run directory (plots)."""

    def close(self) -> None:
        pass

    def position(self) -> dict[str, Any]:
        """Where the record stands, kept in each checkpoint."""
        return {}

    def rewind(self, position: dict[str, Any]) -> None:
        """Back to `position` when a run resumes from that checkpoint: the rows logged after it
        are logged again by the resumed run, so they must go."""


@dataclass
class Start:
    """What a logger is opened with besides its settings."""
    cfg: DictConfig  # the whole validated config (a logger may record it)
    run_dir: Path
    sweep_group: str | None  # the sweep directory of a multirun job
    run_name: str | None


class Logger(Sink):
    """A sink one can choose: one module of kdrun/sinks/ and conf/logger/<name>.yaml (its
    settings, under logger.<name>)."""
    Settings: ClassVar[type] = NoSettings

    @classmethod
    def open(cls, settings, start: Start) -> Logger | None:
        """The logger, or None (having said why) when it cannot start: the run goes on."""
        raise NotImplementedError
