"""Out-of-distribution scores, discovered: every module of this folder that defines a Score
subclass is a score named like the module, chosen in eval.ood.scores, its settings in
eval.ood.settings.<name>. Each score is higher for images the model takes as
in-distribution."""

from __future__ import annotations

from kdrun.checks import typed_settings
from kdrun.evaluation.scores.base import Score
from kdrun.registry import Registry, register_subclasses

SCORES: Registry[type[Score]] = Registry("OOD score")

register_subclasses(SCORES, __name__, __path__, Score)

def build_score(name: str, settings) -> Score:
    """The score `name` with its settings (a config node or dict), typed and checked."""
    cls = SCORES.get(name, key="eval.ood.scores")
    return cls(typed_settings(settings or {}, cls.Settings, f"eval.ood.settings.{name}",
                              f"OOD score {name}", "conf/evaluation/ood.yaml"))


__all__ = ["SCORES", "Score", "build_score"]
