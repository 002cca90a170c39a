"""The training step, as every run and scripts/bench.py takes it: eagerly, or on CUDA captured
once as a CUDA graph and replayed (runtime/graphs.py). At the papers' batch of 128 a GPU step is
launch-bound; a replay launches the whole step - forwards, the method's loss, backward, every
optimiser's step, the epoch's metric sums - at once. Noise inside the step comes from torch's
default CUDA generator, which every replay advances, so each replay draws fresh noise and a
seeded run repeats. The learning-rate schedule stays on the host: it fills the optimisers'
device-tensor rates between replays (training/optimizers.py)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from kdrun.methods import Method
from kdrun.runtime import distributed
from kdrun.runtime.device import RandomStream
from kdrun.runtime.graphs import Replay
from kdrun.runtime.run import Run
from kdrun.training.optimizers import Optimizers

NOT_LOGGED = ("logits", "labels")


def train_step(method: Method, optimizers: Optimizers, images: torch.Tensor,
               labels: torch.Tensor, run: Run, *indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """One optimisation step's device work (the schedule's step is the caller's); `images` in
    the run's memory format (the Stepper converts them once, before a replay copies them);
    `indices`, the images' places in the training split, for a method that `needs_indices`."""
    with run.autocast():
        out = method.training_step(images, labels, *indices)
    optimizers.update(out)
    method.after_update()
    return out


class EpochSums:
    """An epoch's image-weighted sums of each logged loss term and its count of correct
    training predictions, on the device and updated in place, so a captured step adds to the
    same tensors on every replay; the images behind each are counted on the host."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, torch.Tensor] = {}
        self.correct = torch.zeros((), device=device)
        self.counts: dict[str, int] = {}  # images behind each (a group's loss may skip steps)
        self.seen = 0
        self.made_in_capture: set[str] = set()

    def add(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Device work only."""
        n = len(labels)
        targets = out.get("labels", labels)  # a method may re-encode its labels
        self.correct += (out["logits"].detach().argmax(dim=1) == targets).sum()
        for key, value in out.items():
            if key not in NOT_LOGGED:
                if key not in self.totals:
                    self.totals[key] = torch.zeros((), device=self.device)
                    if capturing(self.device):
                        self.made_in_capture.add(key)
                self.totals[key] += value.detach().float() * n

    def forget_captured(self) -> None:
        """Drop the sums a failed capture made: they live in the dead graph's memory."""
        for key in self.made_in_capture:
            del self.totals[key]
        self.made_in_capture = set()

    def keep_captured(self) -> None:
        """The sums made since the last call belong to a graph that was captured: they stay
        (a later failed capture must not drop them)."""
        self.made_in_capture = set()

    def count(self, out: dict[str, torch.Tensor], n: int) -> None:
        self.seen += n
        for key in out:
            if key not in NOT_LOGGED:
                self.counts[key] = self.counts.get(key, 0) + n

    def reset(self) -> None:
        for total in self.totals.values():
            total.zero_()
        self.correct.zero_()
        self.counts, self.seen = {}, 0


def why_not_captured(method: Method, optimizers: Optimizers, run: Run) -> str | None:
    """Why this run's step stays eager although it could be captured, or None."""
    if distributed.world_size() > 1:
        return "under torchrun the gradients' all-reduce stays outside graphs"
    return method.uncapturable() or optimizers.uncapturable()


@dataclass
class Learner:
    """One run's share of a training step: its method, optimisers and epoch sums, and - when
    several runs train in one process (a pack) and the step is not captured - its own random
    stream, so it draws its noise as it would alone. `failure`: what its step raised; it
    takes no further steps."""
    method: Method
    optimizers: Optimizers
    sums: EpochSums
    random: RandomStream | None = None
    failure: Exception | None = None


class Stepper:
    """Takes a fit's training steps for its learners (one run's, or a pack's) and adds them to
    their sums: eagerly, or - when `capture` - replayed as one CUDA graph holding every
    learner's step after a few eager steps (runtime/graphs.Replay; a batch of another shape
    runs eagerly, and a step that fails to capture stays eager). Each form of the step
    (`Method.step_variant`) and each set of learners gets a graph of its own. In a pack, a
    learner whose eager step raises fails alone when `isolate`; otherwise its error
    propagates."""

    def __init__(self, learners: list[Learner], run: Run, capture: bool, isolate: bool = False):
        self.learners, self.run, self.capture, self.isolate = learners, run, capture, isolate
        self.replays: dict[tuple, Replay] = {}  # one per form of the step and set of learners
        for learner in learners:
            if capture:
                learner.optimizers.make_capturable(run.device)
            else:
                learner.optimizers.use_fused(run.device)

    @property
    def captured(self) -> bool:
        return any(replay.captured for replay in self.replays.values())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *indices: torch.Tensor,
                 active: list[Learner] | None = None) -> list[dict[str, torch.Tensor] | None]:
        """One step on one batch of the `active` learners (default: those that have not
        failed): their outputs, in their order (None for one that failed in it)."""
        if active is None:
            active = [learner for learner in self.learners if learner.failure is None]
        images = images.contiguous(memory_format=self.run.memory_format)
        variants = tuple(learner.method.step_variant() for learner in active)
        key = (tuple(self.learners.index(learner) for learner in active), variants)
        if key not in self.replays:
            # another set of learners steps from here on (one failed, or a catch-up ended):
            # the graphs of the earlier sets, and their memory, go
            self.replays = {k: r for k, r in self.replays.items() if k[0] == key[0]}
            named = [v for v in variants if v]
            what = "the training step" + (f" {', '.join(named)}" if named else "")

            def forget_captured():
                for learner in active:
                    learner.sums.forget_captured()
            self.replays[key] = Replay(self.run.device, self.capture, what,
                                       on_failure=forget_captured)
        outs = self.replays[key](functools.partial(self._step, active), images, labels,
                                 *indices)
        for learner, out in zip(active, outs):
            learner.sums.keep_captured()
            if out is not None:
                learner.method.step_taken()
                learner.optimizers.advance()
                learner.sums.count(out, len(labels))
        return outs

    def _step(self, active: list[Learner], images, labels, *indices):
        """The step's outputs, detached: holding them keeps no autograd graph alive (whose
        gradient nodes would pin the warm-up's stream)."""
        outs = []
        for learner in active:
            if learner.method.shared_teacher is not None:  # a new batch: no logits from the last
                learner.method.shared_teacher.forget()
        for learner in active:
            try:
                with learner.random.active() if learner.random else contextlib.nullcontext():
                    out = train_step(learner.method, learner.optimizers, images, labels,
                                     self.run, *indices)
                    learner.sums.add(out, labels)
            except Exception as error:
                if not self.isolate or capturing(self.run.device):
                    raise
                learner.failure = error
                outs.append(None)
                continue
            outs.append({key: value.detach() for key, value in out.items()})
        return outs


def capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()
