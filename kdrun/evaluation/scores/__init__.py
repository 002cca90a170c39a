"""Out-of-distribution scores, discovered: every module of this folder that defines a Score
subclass is a score named like the module (eval.ood.scores.<name> holds its settings). Each
score is higher for images the model takes as in-distribution."""

from __future__ import annotations

import inspect

from kdrun.checks import typed_settings
from kdrun.evaluation.scores.base import Score
from kdrun.registry import Registry, discover

SCORES: Registry[type[Score]] = Registry("OOD score")

for _module in discover(__name__, __path__):
    _classes = [obj for obj in vars(_module).values()
                if inspect.isclass(obj) and issubclass(obj, Score) and obj is not Score
                and obj.__module__ == _module.__name__]
    if _classes:
        SCORES.add(_module.__name__.rsplit(".", 1)[1], _classes[0])


def build_score(name: str, settings) -> Score:
    """The score `name` with its settings (a config node or dict), typed and checked."""
    cls = SCORES.get(name, key=f"eval.ood.scores.{name}")
    return cls(typed_settings(settings or {}, cls.Settings, f"eval.ood.scores.{name}",
                              f"OOD score {name}", "conf/evaluation/ood.yaml"))


__all__ = ["SCORES", "Score", "build_score"]
