"""The method protocol: a method owns the networks it trains and says how one batch becomes
losses; the trainer does the backward pass and steps the optimiser. A new method is one module
in this folder (its name is the method's name) plus conf/method/<name>.yaml, and nothing else:
the module defines one Method subclass whose `Settings` dataclass types its YAML."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from omegaconf import MISSING
from torch import nn

from kdrun.data import BatchMix, ImageData
from kdrun.data.noise import shuffle_outputs
from kdrun.models import Classifier
from kdrun.runtime.run import Run


@dataclass
class MethodSettings:
    """A method's YAML, typed. A method's own settings subclass this (related methods inherit
    each other's) and check their ranges in `__post_init__`, calling super()'s first; a
    wrong key, type or value is one line before any data is read."""
    name: str = MISSING

    def __post_init__(self) -> None:
        pass


@dataclass
class Networks:
    """What kdrun builds for a method besides its settings."""
    student: Classifier
    teacher: Classifier | None = None  # given when the method's class says needs_teacher
    make_model: Callable[..., Classifier] | None = None  # (arch, drop_rate=..., drop_path_rate=...)
                                                         # -> a network built like the student
    teacher_output_shuffle: float = 0.0  # teacher.output_shuffle: share of outputs shuffled
    image_size: int = 32  # the data set's: feature methods size their extra modules by it


@dataclass
class OptimizerGroup:
    """Parameters a method trains with an optimiser of their own (AFD's discriminators): they
    minimise the step's 'loss/<group name>', never 'loss'."""
    params: list[nn.Parameter]
    optim: Any  # a partial optimiser config (`_target_`, `_partial_: true`, lr, ...)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule that several stages share: `steps` optimiser steps in all, its
    warm-up (sched.warmup_epochs) counted in epochs of `steps_per_epoch` steps."""
    steps: int
    steps_per_epoch: int


@dataclass
class Stage:
    """A stretch of training on one data set. Most methods have one; data-free methods first
    make the data they train on. `augment`: the loader applies the data set's crop and flip
    (False when the method distorts its batches itself); `metrics`: figures from the work that
    prepared this stage (synthesis, pseudo-labelling), for results.json; `mix`: batches drawn
    from two parts of the training split at a fixed ratio.

    By default a stage starts a fresh optimiser whose schedule spans its own epochs. A stage
    with a `schedule` starts one spanning that many steps instead, and a stage that `continues`
    keeps the previous stage's optimiser and schedule going (the same networks train on).
    `later_epochs`: the epochs of the training stages still to come, for the run's time left
    (estimated at this stage's pace; work between stages is not counted)."""
    name: str
    data: ImageData
    epochs: int
    augment: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    mix: BatchMix | None = None
    schedule: Schedule | None = None
    continues: bool = False
    later_epochs: int = 0


class SharedTeacherOutputs:
    """One teacher forward per batch for the members of a pack, which share their teacher and
    their batches: the first member to ask for a batch's logits computes them, the others get
    the same tensor. Known by the batch tensor itself (the trainer hands every member the
    same one) within one step, which forgets them first; inside a captured CUDA graph the
    forward is recorded once and every member reads its output."""

    def __init__(self):
        self.images: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    def __call__(self, teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if images is not self.images:
            self.images, self.logits = images, teacher(images)
        return self.logits

    def forget(self) -> None:
        """Before each step: whatever the next batch is, its logits are computed afresh."""
        self.images = self.logits = None


def share_teacher_outputs(methods: list[Method]) -> None:
    """The members of a pack (methods sharing one teacher and one batch stream) run the teacher
    once per batch between them."""
    if len(methods) > 1:
        shared = SharedTeacherOutputs()
        for method in methods:
            method.shared_teacher = shared


def freeze(model: nn.Module) -> nn.Module:
    """The one place a teacher is frozen: no gradients, so no optimiser ever updates it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class Method(nn.Module):
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    needs_teacher: ClassVar[bool] = False
    # True: training_step takes a third argument, each image's index in the training split
    needs_indices: ClassVar[bool] = False
    # True: building the method connects its networks' feature maps (stage indices, regressor
    # shapes), so validation builds it on meta-device networks before any data or teacher
    reads_features: ClassVar[bool] = False
    # True: the method distorts its training batches itself (e.g. two views per image), so the
    # loader hands it un-augmented ones
    augments_batches: ClassVar[bool] = False
    # True: jobs of this method can train in a pack (hydra/launcher=packed), several students
    # on one data stream and one teacher forward: one student, one stage, a teacher (if any)
    # that is deterministic and read through `teacher_logits` alone, no optimiser groups
    packable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "stages" in cls.__dict__ and "packable" not in cls.__dict__:
            cls.packable = False  # stages of its own: a pack trains one stage only

    def __init__(self, settings: MethodSettings, networks: Networks):
        super().__init__()
        self.settings = settings
        self.student = networks.student
        given = networks.teacher if self.needs_teacher else None
        self.teacher = freeze(given) if given is not None else None
        self.teacher_output_shuffle = networks.teacher_output_shuffle
        self.image_size = networks.image_size
        self.shared_teacher: SharedTeacherOutputs | None = None  # set by a pack's trainer

    @classmethod
    def check_data(cls, settings: MethodSettings, data: ImageData) -> None:
        """A one-line ConfigError for data this method cannot train on (a memory bank larger
        than the training split), raised once the data is read, before a teacher is trained."""

    @classmethod
    def teacher_settings(cls, settings: MethodSettings) -> dict[str, Any]:
        """teacher.<key>: value the method's settings ask the teacher to be trained with
        (written into the run's config before the teacher is resolved); none by default."""
        return {}

    def training_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns 'loss' (what the trainer minimises), 'logits' (the student's, for train
        accuracy; 'labels' if the batch's labels are encoded) and any scalar parts to log. A
        method that `needs_indices` takes the images' indices in the split as a third
        argument."""
        raise NotImplementedError

    def eval_model(self) -> nn.Module:
        """The network that evaluation measures."""
        return self.student

    def stages(self, data: ImageData, epochs: int, run: Run) -> Iterator[Stage]:
        """The run's training stages, in order. Work between stages (synthesis) happens when
        the next one is asked for, with the networks as the previous stage left them; its
        figures go in the stage's `metrics`. Under torch.distributed every rank runs it and
        must arrive at the same data: share the work out (a sharded evaluation loader gives
        each rank its part) and gather the results."""
        yield Stage("train", data, epochs, augment=not self.augments_batches)

    def peer_models(self) -> dict[str, nn.Module]:
        """Other trained networks worth evaluating and keeping (online methods' peers), by name;
        their metrics are logged as '<name>/test/acc', ..."""
        return {}

    def uncapturable(self) -> str | None:
        """Why this method's training step cannot be captured as a CUDA graph and replayed
        (data-dependent shapes, host work per image), or None. Its Python runs at capture
        only: host choices between steps go in `step_variant`, counters in `step_taken`."""
        return None

    def step_variant(self) -> str | None:
        """Which form the next training step takes, where a choice made on the host changes it
        from step to step (AFD updates its discriminators every `disc_every` steps): a short
        name for the log, or None for the usual form. Each form is captured as a CUDA graph
        of its own."""
        return None

    def after_update(self) -> None:
        """Device work after every optimiser step, inside the step (so inside its CUDA graph
        when captured): a moving average of the weights, say. Nothing by default."""

    def step_taken(self) -> None:
        """Host bookkeeping after every training step, outside any graph: the counters that
        choose the next `step_variant`."""

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
        """The teacher's logits for `images`, the contract every loss may rely on: an ordinary
        tensor that carries no gradient into the teacher (computed under no_grad, not
        inference_mode), so a loss may use it any way it likes - KL, MSE, in-place
        arithmetic - and autograd may save it for the backward pass. `teacher.output_shuffle`
        shuffles a share of its rows."""
        with torch.no_grad():
            logits = (self.teacher(images) if self.shared_teacher is None
                      else self.shared_teacher(self.teacher, images))
            return shuffle_outputs(logits, self.teacher_output_shuffle)

    def teacher_embedding(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits (as `teacher_logits` gives them) and the pooled features its
        classifier reads, under the same contract."""
        with torch.no_grad():
            logits, pooled = self.teacher.forward_embedding(images)
        return shuffle_outputs(logits, self.teacher_output_shuffle), pooled

    def teacher_features(self, images: torch.Tensor, indices: list[int],
                         pre_activation: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The teacher's logits (as `teacher_logits` gives them) and its feature maps at the
        stage `indices`, under the same contract: no gradient into the teacher."""
        with torch.no_grad():
            logits, features = self.teacher.forward_intermediates(images, indices,
                                                                  pre_activation=pre_activation)
        return shuffle_outputs(logits, self.teacher_output_shuffle), features
