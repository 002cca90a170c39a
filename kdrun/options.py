"""What Hydra can compose: the schema, plus a `teacher=NAME` / `student=NAME` option for every
architecture the model zoo discovered (so a new model needs no YAML), and the `${pid:}`
resolver that makes the default run directory one run's own."""

from __future__ import annotations

import os

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from kdrun.config import register_schema
from kdrun.models import MODELS


def register_configs() -> None:
    register_schema()
    # two runs started in the same second (a shell loop, a job array) differ in their process
    OmegaConf.register_new_resolver("pid", os.getpid, replace=True, use_cache=True)
    cs = ConfigStore.instance()
    for arch in MODELS.names():
        cs.store(group="teacher", name=arch, node={"arch": arch})
        cs.store(group="student", name=arch, node={"arch": arch})
