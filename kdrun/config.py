"""The config schema: types for every key kdrun itself reads, so Hydra rejects `alpha=abc` or a
misspelt key at composition time. Values live in the YAML under conf/ (the schema holds none),
so the two can never disagree. `method` and `dataset` are typed by the method's and the data
set's own settings classes, which kdrun/validate.py applies; ranges and names are checked
there too, before any data is touched. This module imports nothing of kdrun."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class Precision(Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Mode(Enum):
    train = "train"
    eval = "eval"


class SchedName(Enum):
    multistep = "multistep"
    cosine = "cosine"
    constant = "constant"


@dataclass
class SchedConfig:
    name: SchedName = MISSING
    milestones: list[float] = MISSING
    gamma: float = MISSING
    warmup_epochs: float = MISSING
    min_lr: float = MISSING


@dataclass
class ModelConfig:
    arch: str = MISSING
    drop_rate: float = MISSING


@dataclass
class TeacherConfig(ModelConfig):
    checkpoint: str = MISSING
    label_noise: float = MISSING
    output_shuffle: float = MISSING
    seed: int = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    cache_dir: str = MISSING
    optim: dict[str, Any] = field(default_factory=dict)
    sched: SchedConfig = field(default_factory=SchedConfig)


@dataclass
class TrainerConfig:
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    precision: Precision = MISSING
    channels_last: bool = MISSING
    compile: bool | None = None
    cuda_graph: bool | None = None
    sync_bn: bool = MISSING
    max_steps: int | None = None
    resume: bool = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    progress: bool = MISSING


@dataclass
class SynthesisConfig:
    pool_size: int = MISSING
    batch_size: int = MISSING
    iterations: int = MISSING


@dataclass
class KdrunConfig:
    alpha: float = MISSING
    T: float = MISSING
    sigma: float | None = MISSING  # null: the noise methods' default
    seed: int = MISSING
    epochs: int = MISSING
    mode: Mode = MISSING
    checkpoint: str | None = None
    cache_dir: str = MISSING
    objective: str | None = MISSING  # null: val/acc with a validation split, else test/acc
    dataset: dict[str, Any] = field(default_factory=dict)  # typed by the data set's Settings
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=dict)  # typed by the method's Settings
    optim: dict[str, Any] = field(default_factory=dict)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: dict[str, Any] = field(default_factory=dict)  # typed by the evaluations' Settings
    logger: dict[str, Any] = field(default_factory=dict)  # name: settings, typed by each logger
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


def unknown_keys(cfg: DictConfig, schema: type = KdrunConfig, prefix: str = "") -> list[str]:
    """The dotted keys of `cfg` that `schema` does not define (Hydra's `+key=value` adds any
    key, even inside a typed section). Free-form sections (dict-typed) are not looked into:
    the method's and data set's settings classes check theirs."""
    types = typing.get_type_hints(schema)
    unknown = []
    for key in cfg:
        full = f"{prefix}{key}"
        if key not in types:
            unknown.append(full)
        elif dataclasses.is_dataclass(types[key]) and isinstance(cfg[key], DictConfig):
            unknown += unknown_keys(cfg[key], types[key], f"{full}.")
    return unknown


def schema_keys(schema: type = KdrunConfig, prefix: str = "") -> list[str]:
    """Every dotted key the schema defines (for 'did you mean' hints)."""
    keys = []
    for key, kind in typing.get_type_hints(schema).items():
        keys.append(f"{prefix}{key}")
        if dataclasses.is_dataclass(kind):
            keys += schema_keys(kind, f"{prefix}{key}.")
    return keys


def register_schema() -> None:
    ConfigStore.instance().store(name="kdrun_schema", node=KdrunConfig)


def choice(value: Enum | str) -> str:
    """The string of an enum setting (composed configs hold the Enum, hand-made ones a str)."""
    return value.value if isinstance(value, Enum) else value


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (for W&B and cache keys)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
