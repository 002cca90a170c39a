"""Adaptive DeepInversion: the student in the synthesis loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.data import ImageData, TensorSplit
from kdrun.data.pool import save_pool
from kdrun.methods.base import Stage
from kdrun.methods.deepinversion import POOL_FILE, DeepInversion, DeepInversionSettings
from kdrun.methods.inversion import Competition
from kdrun.runtime.run import Run


@dataclass
class AdaptiveDeepInversionSettings(DeepInversionSettings):
    competition_weight: float = MISSING  # alpha_c
    competition_T: float = MISSING  # temperature of the JS divergence
    rounds: int = MISSING  # synthesis/distillation rounds

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.competition_weight >= 0, "method.competition_weight",
                self.competition_weight, "use >= 0")
        require(self.rounds >= 1, "method.rounds", self.rounds, "use >= 1")
        require(self.competition_T > 0, "method.competition_T", self.competition_T,
                "the temperature must be > 0")


class AdaptiveDeepInversion(DeepInversion):
    """Adaptive DeepInversion (Yin et al., arXiv 1912.08795): the synthesis loss adds
    competition_weight * (1 - JS(p_teacher, p_student)) at temperature competition_T, favouring
    images the current student gets wrong. The student is in the loop, so stages alternate:
    each of `rounds` rounds synthesises pool_size/rounds images with the current student, then
    distils on the pool so far for epochs/rounds epochs."""

    Settings = AdaptiveDeepInversionSettings

    def competition(self) -> Competition:
        return Competition(self.settings.competition_weight, self.settings.competition_T)

    def stages(self, data: ImageData, epochs: int, run: Run):
        s = self.settings
        per_round = math.ceil(s.pool_size / s.rounds)
        pool: TensorSplit | None = None
        for r in range(1, s.rounds + 1):
            new = self.synthesize(data.classes, per_round, f"pool-round{r}.pt", run,
                                  student=self.student)
            pool = new if pool is None else TensorSplit(torch.cat([pool.images, new.images]),
                                                        torch.cat([pool.labels, new.labels]))
            if r == s.rounds:  # the whole pool, for reuse like DeepInversion's
                save_pool(run.dir / "synthetic" / POOL_FILE, pool, data.classes,
                          meta={"method": type(self).__name__, "teacher": self.teacher.arch})
            yield Stage(f"round{r}", ImageData(pool, data.test, data.classes),
                        max(1, epochs // s.rounds), metrics=self.synthesis_metrics(pool, run))
