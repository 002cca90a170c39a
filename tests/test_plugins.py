"""Evaluations and loggers are plug-ins: one module and one YAML each, discovered. The tests
here add one of each to the installed package for the length of a test (and remove it), and
run the real CLI and kdrun-report: nothing else is touched, yet the new evaluation's key lands
in results.json, its line in the summary and its column in the report, and the new logger
receives the run's rows."""

from __future__ import annotations

import json
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest

import kdrun.evaluation
import kdrun.sinks

from conftest import TINY, read_results

pytestmark = pytest.mark.slow

EVALUATION = '''"""Written by tests/test_plugins.py: counts the test images, plus an offset."""
from dataclasses import dataclass

from omegaconf import MISSING

from kdrun.evaluation.base import Evaluation


@dataclass
class Settings:
    offset: float = MISSING


class Probe(Evaluation):
    Settings = Settings
    prefixes = ("probe/",)

    def measure(self, subject):
        return {"probe/images": len(subject.test.labels) + self.settings.offset}

    @classmethod
    def summary_lines(cls, results):
        return [f"  probe  {results['probe/images']:.1f} images"] if "probe/images" in results \\
            else []

    @classmethod
    def label(cls, key):
        return "probed images"

    @classmethod
    def report_metrics(cls, keys):
        return [k for k in keys if cls.owns(k)]
'''

LOGGER = '''"""Written by tests/test_plugins.py: every row as a line of probe.jsonl."""
import json
from dataclasses import dataclass

from omegaconf import MISSING

from kdrun.sinks.base import Logger


@dataclass
class Settings:
    file: str = MISSING


class ProbeLogger(Logger):
    Settings = Settings

    def __init__(self, path):
        self.out = open(path, "a")

    @classmethod
    def open(cls, settings, start):
        return cls(start.run_dir / settings.file)

    def log(self, metrics, step, counter="step"):
        self.out.write(json.dumps({"at": [counter, step], **metrics}) + "\\n")

    def close(self):
        self.out.close()
'''


@pytest.fixture
def plugins():
    """zz_probe as an evaluation and as a logger: a module and a YAML each, removed after."""
    written = [
        (Path(kdrun.evaluation.__file__).parent / "zz_probe.py", EVALUATION),
        (Path(str(files("kdrun.conf"))) / "evaluation" / "zz_probe.yaml", "offset: 0.5\n"),
        (Path(kdrun.sinks.__file__).parent / "zz_probe.py", LOGGER),
        (Path(str(files("kdrun.conf"))) / "logger" / "zz_probe.yaml",
         "# @package logger.zz_probe\nfile: probe.jsonl\n"),
    ]
    try:
        for path, text in written:
            path.write_text(text)
        yield
    finally:
        for path, _ in written:
            path.unlink(missing_ok=True)
            for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*"):
                cached.unlink()


def test_a_new_evaluation_and_a_new_logger_are_one_module_and_one_yaml_each(plugins, tmp_path,
                                                                           cli_env):
    proc = subprocess.run(
        ["kdrun", *(o for o in TINY if not o.startswith("logger=")), "method=vanilla",
         "+eval.zz_probe={}", "logger=[zz_probe]", f"hydra.run.dir={tmp_path}/sweep/0"],
        env=cli_env, cwd=tmp_path, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "sweep" / "0")
    assert results["probe/images"] == pytest.approx(51.5)  # synthetic's 51 test images
    assert "  probe  51.5 images" in proc.stderr + proc.stdout
    rows = [json.loads(line) for line in
            (tmp_path / "sweep" / "0" / "probe.jsonl").read_text().splitlines()]
    jsonl = [json.loads(line) for line in
             (tmp_path / "sweep" / "0" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(jsonl) and rows[-1]["at"] == ["step", jsonl[-1]["step"]]
    report = subprocess.run(["kdrun-report", str(tmp_path / "sweep")], env=cli_env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    header = report.stdout.splitlines()[0]
    assert "| probed images |" in header
    assert "| 51.50 |" in report.stdout.splitlines()[2]
