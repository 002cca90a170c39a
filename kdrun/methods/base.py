"""The method protocol: a method owns the networks it trains and says how one batch becomes
losses; the trainer does the backward pass and steps the optimiser. A new method is one file
here plus one YAML in conf/method/."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.data import ImageData
from kdrun.data.noise import shuffle_outputs
from kdrun.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")


@dataclass
class OptimizerGroup:
    """Parameters a method trains with an optimiser of their own (AFD's discriminators): they
    minimise the step's 'loss/<group name>', never 'loss'."""
    params: list[nn.Parameter]
    optim: DictConfig  # a partial optimiser config (`_target_`, `_partial_: true`, lr, ...)


@dataclass
class Stage:
    """A stretch of training on one data set. Most methods have one; data-free methods first
    make the data they train on."""
    name: str
    data: ImageData
    epochs: int


@dataclass
class StageContext:
    """What a method may use between stages, without knowing the run's back-ends."""
    run_dir: Path
    device: torch.device
    autocast: Callable
    memory_format: torch.memory_format
    image_size: int
    seed: int
    log: Callable[[dict[str, Any]], None]  # a row of metrics
    images: Callable[[dict[str, Path]], None]  # PNG files by key
    results: dict[str, Any]  # figures for results.json
    load_dataset: Callable[[str, str | None], ImageData]  # another data set by name (and root)
    eval_loader: Callable[[Any, int], Any]  # (split, batch size) -> un-augmented batches, in
                                            # order; under torch.distributed this rank's part


def freeze(model: nn.Module) -> nn.Module:
    """The one place a teacher is frozen: no gradients, so no optimiser ever updates it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Method(nn.Module):
    needs_teacher: ClassVar[bool] = False
    # True: the method distorts its training batches itself (e.g. two views per image), so the
    # loader hands it un-augmented ones
    augments_batches: ClassVar[bool] = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.teacher = freeze(teacher) if teacher is not None else None
        # Share of each batch's teacher outputs shuffled across classes (teacher.corruption).
        self.teacher_corruption = 0.0

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        """Reject impossible method settings (ConfigError) before any data is loaded."""

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns 'loss' (what the trainer minimises), 'logits' (the student's, for train
        accuracy; 'labels' if the batch's labels are encoded) and any scalar parts to log."""
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network that evaluation measures."""
        return self.student

    def stages(self, data: ImageData, epochs: int, context: StageContext) -> Iterator[Stage]:
        """The run's training stages, in order. Work between stages (synthesis) happens when
        the next one is asked for, with the networks as the previous stage left them. Under
        torch.distributed every rank runs it and must arrive at the same data: share the work
        out (`context.eval_loader` gives each rank its part) and gather the results."""
        yield Stage("train", data, epochs)

    def peer_models(self) -> dict[str, nn.Module]:
        """Other trained networks worth evaluating and keeping (online methods' peers), by name;
        their metrics are logged as '<name>/test/acc', ..."""
        return {}

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        """Parameter groups with optimisers of their own; every other trainable parameter is
        stepped by the run's optimiser on 'loss'. A group's loss may be left out of a step's
        output to skip its update on that step."""
        return {}

    def train(self, mode: bool = True) -> Method:
        """The teacher stays in eval mode (its BN statistics are its own); a method that wants
        a stochastic teacher says so in `teacher_logits` or overrides this."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_input(self, images: torch.Tensor) -> torch.Tensor:
        """What the student sees of a batch (input-noise methods override this)."""
        return images

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return shuffle_outputs(self.teacher(images), self.teacher_corruption)
