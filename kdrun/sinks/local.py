"""The run directory's own record: metrics.jsonl (one line per logged row) and results.json;
and the reading back of a logged series (kdrun-report's best-epoch statistic)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdrun.sinks.base import Sink


class LocalSink(Sink):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self._metrics = open(self.metrics_path, "a")

    def log(self, metrics: dict[str, Any], step: int, counter: str = "step") -> None:
        self._metrics.write(json.dumps({counter: step, **metrics}) + "\n")
        self._metrics.flush()

    def images(self, images: dict[str, Path]) -> None:
        """Nothing to do: plots are written into the run directory already."""

    def results(self, results: dict[str, Any]) -> None:
        path = self.run_dir / "results.json"
        tmp = path.with_name(".results.json.tmp")
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)

    def close(self) -> None:
        self._metrics.close()

    def position(self) -> dict[str, Any]:
        return {"metrics_file": str(self.metrics_path.resolve()),
                "metrics_bytes": self._metrics.tell()}

    def rewind(self, position: dict[str, Any]) -> None:
        """Only this file, and only backwards (a teacher resumed in another run's directory
        leaves that run's record alone)."""
        if position.get("metrics_file") != str(self.metrics_path.resolve()):
            return
        if position["metrics_bytes"] <= self._metrics.tell():
            self._metrics.truncate(position["metrics_bytes"])
            self._metrics.seek(position["metrics_bytes"])


def epoch_series(run_dir: Path, key: str) -> list[float]:
    """`key`'s value at each evaluated epoch, in the order logged (empty without a record):
    the rows metrics.jsonl holds with an `epoch` counter, of every stage of the run."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    values = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the half line of a killed run
            continue
        if "epoch" in row and key in row:
            values.append(float(row[key]))
    return values
