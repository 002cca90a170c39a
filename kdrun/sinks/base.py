"""The sink protocol: what the trainer, the methods and the evaluation log through."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Sink:
    def log(self, metrics: dict[str, Any]) -> None:
        """One row of step- or epoch-level metrics."""

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
