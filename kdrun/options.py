"""What Hydra can compose: the schema, plus a `teacher=NAME` / `student=NAME` option for every
architecture the model zoo discovered (so a new model needs no YAML)."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from kdrun.config import register_schema
from kdrun.models import MODELS


def register_configs() -> None:
    register_schema()
    cs = ConfigStore.instance()
    for arch in MODELS.names():
        cs.store(group="teacher", name=arch, node={"arch": arch})
        cs.store(group="student", name=arch, node={"arch": arch})
