"""Learning-rate schedules stepped once per optimiser step, with linear warm-up. Milestones are
fractions of the run, so a schedule keeps its shape when `epochs` changes."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LambdaLR

from kdrun.config import choice
from kdrun.methods.base import Schedule


def lr_factor(step: int, sched: DictConfig, total_steps: int, warmup_steps: int,
              min_factor: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    name = choice(sched.name)
    if name == "multistep":
        passed = sum(step >= round(m * total_steps) for m in sched.milestones)
        return sched.gamma ** passed
    if name == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def build_scheduler(sched: DictConfig, optimizer: torch.optim.Optimizer, length: Schedule,
                    reference_lr: float | None = None) -> LambdaLR:
    """`reference_lr`: the learning rate `sched.min_lr` is relative to (the run's optimiser's),
    so further optimisers (discriminators) follow the same curve from their own lr."""
    warmup = round(sched.warmup_epochs * length.steps_per_epoch)
    min_factor = sched.min_lr / (reference_lr or optimizer.param_groups[0]["lr"])
    return LambdaLR(optimizer,
                    lambda step: lr_factor(step, sched, length.steps, warmup, min_factor))
