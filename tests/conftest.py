"""Shared fixtures: the real config tree composed by Hydra and shrunk to tiny data and models;
an isolated cache and no W&B credentials for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

import kdrun.cli  # noqa: F401  (registers the schema and the teacher/student options)
from kdrun.sinks.base import Sink

# tests of CUDA graphs and fused optimisers: they run where there is a GPU (scripts/gpu_check.sh)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# A learnable 4-class 16x16 data set, tiny networks, one short epoch: a whole run in ~2 s.
TINY = [
    "dataset=synthetic",
    "teacher=resnet8",
    "student=resnet8",
    "epochs=1",
    "teacher.epochs=2",
    "teacher.batch_size=32",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.device=cpu",
    "trainer.progress=false",
    "trainer.log_every=2",
    "eval=clean",
    "logger=none",
]


def compose_config(*overrides: str, tiny: bool = True):
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        return compose("config", overrides=[*(TINY if tiny else []), *overrides])


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """Each test session has its own cache; W&B never goes online or prompts."""
    cache = tmp_path_factory.getbasetemp() / "kdrun-cache"
    monkeypatch.setenv("KDRUN_CACHE", str(cache))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", os.devnull)
    monkeypatch.setenv("HOME", str(tmp_path_factory.getbasetemp() / "home"))
    yield


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for running the real `kdrun` console script in a subprocess."""
    env = dict(os.environ)
    env["KDRUN_CACHE"] = str(tmp_path / "cache")
    return env


def read_results(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "results.json").read_text())


class MemorySink(Sink):
    """A sink that keeps what it is given, for tests that call a layer directly."""

    def __init__(self):
        self.rows, self.pictures, self.final = [], {}, {}

    def log(self, metrics, step, counter="step"):
        self.rows.append({counter: step, **metrics})

    def images(self, images):
        self.pictures.update(images)

    def results(self, results):
        self.final = results


def make_run(*overrides: str, run_dir: Path | None = None):
    """The Run object of the tiny config (fp32, contiguous memory), as the CLI builds it."""
    from kdrun.runtime.run import Run

    cfg = compose_config("trainer.precision=fp32", "trainer.channels_last=false", *overrides)
    return Run.start(cfg, run_dir or Path("."), MemorySink())
