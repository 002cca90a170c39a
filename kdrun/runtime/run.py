"""The run object: what every layer needs from the run it works for (the validated config, the
run directory, device, precision, memory format, seed and where metrics go), built once by the
CLI and handed down instead of threaded arguments."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig

from kdrun.config import choice
from kdrun.runtime import distributed
from kdrun.runtime.device import (
    autocast,
    memory_format,
    resolve_compile,
    resolve_cuda_graph,
    resolve_device,
    resolve_precision,
)


class Recorder(Protocol):
    """Where a run's metrics go (kdrun.sinks implements it)."""

    def log(self, metrics: dict[str, Any], step: int, counter: str = "step") -> None: ...

    def images(self, images: dict[str, Path]) -> None: ...

    def results(self, results: dict[str, Any]) -> None: ...

    def position(self) -> dict[str, Any]: ...

    def rewind(self, position: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Run:
    cfg: DictConfig  # the validated config
    dir: Path
    device: torch.device
    precision: torch.dtype | None  # autocast dtype; None: fp32
    memory_format: torch.memory_format
    compile: bool  # torch.compile the networks
    cuda_graph: bool  # capture the training step as a CUDA graph
    seed: int  # the seed of what is being trained (the teacher's while a teacher trains)
    sink: Recorder

    @classmethod
    def start(cls, cfg: DictConfig, run_dir: Path, sink: Recorder) -> Run:
        device = distributed.device_for(resolve_device(cfg.trainer.device))
        return cls(cfg, run_dir, device, resolve_precision(choice(cfg.trainer.precision), device),
                   memory_format(cfg.trainer.channels_last),
                   resolve_compile(cfg.trainer.compile, device),
                   resolve_cuda_graph(cfg.trainer.cuda_graph, device), cfg.seed, sink)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

    def environment(self) -> dict[str, Any]:
        """What a run's numbers depend on besides its config and seed (CPU kernels differ with
        the thread count, GPU ones with the device and precision)."""
        return {"device": str(self.device), "precision": "fp32" if self.precision is None
                else "bf16", "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                "processes": distributed.world_size(), "cuda_graph": self.cuda_graph}

    def replace(self, **changes) -> Run:
        """The same run with some parts changed (a teacher trains in its cache folder, with its
        own seed, logging under teacher/)."""
        return dataclasses.replace(self, **changes)
