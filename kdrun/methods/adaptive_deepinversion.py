"""Adaptive DeepInversion: the student in the synthesis loop."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from omegaconf import MISSING

from kdrun.checks import require
from kdrun.data import ImageData, TensorSplit
from kdrun.data.device_loader import num_batches
from kdrun.data.pool import save_pool
from kdrun.methods.base import Schedule, Stage
from kdrun.methods.deepinversion import POOL_FILE, DeepInversion, DeepInversionSettings
from kdrun.methods.inversion import COMPETITION_FORMS, Competition
from kdrun.runtime.run import Run


@dataclass
class AdaptiveDeepInversionSettings(DeepInversionSettings):
    competition_weight: float = MISSING  # alpha_c
    competition_T: float = MISSING  # temperature of the JS divergence
    competition_form: str = MISSING  # js: the paper's JS | nvlabs: NVlabs' clamped variant
    rounds: int = MISSING  # synthesis/distillation rounds

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.competition_weight >= 0, "method.competition_weight",
                self.competition_weight, "use >= 0")
        require(self.rounds >= 1, "method.rounds", self.rounds, "use >= 1")
        require(self.competition_T > 0, "method.competition_T", self.competition_T,
                "the temperature must be > 0")
        require(self.competition_form in COMPETITION_FORMS, "method.competition_form",
                self.competition_form, f"choose {' or '.join(COMPETITION_FORMS)}")


class AdaptiveDeepInversion(DeepInversion):
    """Adaptive DeepInversion (Yin et al., arXiv 1912.08795): the synthesis loss adds
    competition_weight * (1 - JS(p_teacher, p_student)) at temperature competition_T, favouring
    images the current student gets wrong (the paper's JS, or with competition_form=nvlabs
    the clamped variant NVlabs' code computes). The student is in the loop, so stages alternate:
    each of `rounds` rounds synthesises pool_size/rounds images with the current student, then
    distils on the pool so far.

    The distillation is DeepInversion's, cut into rounds: one optimiser and one learning-rate
    schedule run through all of them, as long as DeepInversion's (`epochs` passes over
    pool_size images), and each round takes an equal share of those steps, in whole epochs over
    its pool (so the total lies within rounding of DeepInversion's). How the paper splits the
    budget between rounds is not stated; equal shares are ours."""

    Settings = AdaptiveDeepInversionSettings

    def competition(self) -> Competition:
        s = self.settings
        return Competition(s.competition_weight, s.competition_T, s.competition_form)

    def stages(self, data: ImageData, epochs: int, run: Run):
        s = self.settings
        batch_size = run.cfg.trainer.batch_size
        sizes = self.pool_sizes()
        round_epochs = self.round_epochs(epochs, batch_size)
        schedule = Schedule(
            steps=sum(e * num_batches(n, batch_size, train=True)
                      for n, e in zip(sizes, round_epochs, strict=True)),
            steps_per_epoch=num_batches(s.pool_size, batch_size, train=True))
        pool: TensorSplit | None = None
        for r in range(1, s.rounds + 1):
            new = self.synthesize(data.classes, sizes[0], f"pool-round{r}.pt", run,
                                  student=self.student)
            pool = new if pool is None else TensorSplit(torch.cat([pool.images, new.images]),
                                                        torch.cat([pool.labels, new.labels]))
            if r == s.rounds:  # the whole pool, for reuse like DeepInversion's
                save_pool(run.dir / "synthetic" / POOL_FILE, pool, data.classes,
                          meta={"method": type(self).__name__, "teacher": self.teacher.arch})
            yield Stage(f"round{r}", replace(data, train=pool),
                        round_epochs[r - 1], metrics=self.synthesis_metrics(pool, run),
                        schedule=schedule if r == 1 else None, continues=r > 1,
                        later_epochs=sum(round_epochs[r:]))

    def pool_sizes(self) -> list[int]:
        """The pool's size in each round: pool_size/rounds images more every round."""
        per_round = math.ceil(self.settings.pool_size / self.settings.rounds)
        return [per_round * r for r in range(1, self.settings.rounds + 1)]

    def round_epochs(self, epochs: int, batch_size: int) -> list[int]:
        """Each round's epochs over its pool: a `rounds`-th of DeepInversion's steps
        (`epochs` over pool_size images) each, rounded to whole epochs, at least one."""
        s = self.settings
        share = epochs * num_batches(s.pool_size, batch_size, train=True) / s.rounds
        return [max(1, round(share / num_batches(n, batch_size, train=True)))
                for n in self.pool_sizes()]

