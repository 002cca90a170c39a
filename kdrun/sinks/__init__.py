"""Where metrics go: the run directory always, and each chosen logger (`logger=[wandb,
tensorboard]`; `logger=none` or `[]`: none). Loggers are discovered: every module of this folder
that defines a Logger subclass is a logger named like the module and like its YAML in
conf/logger/. Methods and the trainer log through a Sink and know nothing about the back-ends."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from kdrun.checks import typed_settings
from kdrun.registry import Registry, register_subclasses
from kdrun.runtime import distributed
from kdrun.sinks.base import Logger, Sink, Start
from kdrun.sinks.local import LocalSink

LOGGERS: Registry[type[Logger]] = Registry("logger")


class MultiSink(Sink):
    def __init__(self, sinks: list):
        self.sinks = sinks

    def log(self, metrics, step, counter="step"):
        for sink in self.sinks:
            sink.log(metrics, step, counter)

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
    """Logs under a prefix (e.g. 'teacher/' while a teacher trains inside a student's run),
    its steps counted by the prefixed counter ('teacher/step')."""

    def __init__(self, sink: Sink, prefix: str):
        self.sink = sink
        self.prefix = prefix

    def log(self, metrics, step, counter="step"):
        self.sink.log({f"{self.prefix}{k}": v for k, v in metrics.items()}, step,
                      self.prefix + counter)

    def position(self):
        return self.sink.position()

    def rewind(self, position):
        self.sink.rewind(position)


def logger_settings(name: str, settings: DictConfig | None):
    """A logger's settings, typed and checked (ConfigError: one line)."""
    cls = LOGGERS.get(name, key="logger")
    return typed_settings(settings or {}, cls.Settings, f"logger.{name}", f"logger {name}",
                          f"conf/logger/{name}.yaml")


def build_sinks(cfg: DictConfig, run_dir: Path, sweep_group: str | None,
                run_name: str | None) -> MultiSink:
    """The run directory's record and each configured logger that could start. Under
    torch.distributed only rank 0 records (its metrics are already summed over ranks)."""
    if not distributed.is_main():
        return MultiSink([])
    sinks: list[Sink] = [LocalSink(run_dir)]
    start = Start(cfg, run_dir, sweep_group, run_name)
    for name, settings in cfg.logger.items():
        logger = LOGGERS.get(name, key="logger").open(logger_settings(name, settings), start)
        if logger is not None:
            sinks.append(logger)
    return MultiSink(sinks)


register_subclasses(LOGGERS, __name__, __path__, Logger)

__all__ = ["LOGGERS", "MultiSink", "PrefixedSink", "Sink", "build_sinks", "logger_settings"]
