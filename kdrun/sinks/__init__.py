"""Where metrics go: the run directory always, W&B when configured. Methods and the trainer
log through a Sink and know nothing about the back-ends."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from kdrun.runtime import distributed
from kdrun.sinks.base import Sink
from kdrun.sinks.local import LocalSink

log = logging.getLogger(__name__)


class MultiSink(Sink):
    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, metrics):
        for sink in self.sinks:
            sink.log(metrics)

    def results(self, results):
        for sink in self.sinks:
            sink.results(results)

    def images(self, images):
        for sink in self.sinks:
            sink.images(images)

    def close(self):
        for sink in self.sinks:
            sink.close()

    def position(self):
        return {key: value for sink in self.sinks for key, value in sink.position().items()}

    def rewind(self, position):
        for sink in self.sinks:
            sink.rewind(position)


class PrefixedSink(Sink):
    """Logs under a prefix (e.g. 'teacher/' while a teacher trains inside a student's run)."""

    def __init__(self, sink: Sink, prefix: str):
        self.sink = sink
        self.prefix = prefix

    def log(self, metrics):
        self.sink.log({f"{self.prefix}{k}": v for k, v in metrics.items()})

    def position(self):
        return self.sink.position()

    def rewind(self, position):
        self.sink.rewind(position)


def build_sinks(cfg: DictConfig, run_dir: Path, sweep_group: str | None,
                run_name: str | None) -> MultiSink:
    """Under torch.distributed only rank 0 records (its metrics are already summed over
    ranks)."""
    if not distributed.is_main():
        return MultiSink([])
    sinks: list = [LocalSink(run_dir)]
    if cfg.logger.name == "wandb":
        from kdrun.sinks.wandb import open_wandb_sink

        wandb_sink = open_wandb_sink(cfg, run_dir, sweep_group, run_name)
        if wandb_sink is not None:
            sinks.append(wandb_sink)
    return MultiSink(sinks)
