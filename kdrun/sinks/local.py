"""The run directory's own record: metrics.jsonl (one line per logged row) and results.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class LocalSink:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(run_dir / "metrics.jsonl", "a")

    def log(self, metrics: dict[str, Any]) -> None:
        self._metrics.write(json.dumps(metrics) + "\n")
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
