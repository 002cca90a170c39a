"""The data sets, discovered: each module here is one data set, named like the module and like
its YAML in conf/dataset/. It defines `load(settings, root, cache_dir) -> ImageData`; when the
data set has keys of its own, `Settings` (a subclass of DatasetSettings); `READS_ROOT = False`
when it reads no files (its `root` then says nothing about its images); `TRAINING_SET_ONLY`
when no other role can name it; `OOD_ONLY` when only eval.ood can (read whole, its classes
unused). A new data set is one module here plus its YAML."""

from __future__ import annotations

from types import ModuleType

from kdrun.registry import Registry, discover

DATASETS: Registry[ModuleType] = Registry("data set")

for _module in discover(__name__, __path__):
    if hasattr(_module, "load"):
        DATASETS.add(_module.__name__.rsplit(".", 1)[1], _module)
