"""The training step, as every run and scripts/bench.py takes it: eagerly, or on CUDA captured
once as a CUDA graph and replayed (runtime/graphs.py). At the papers' batch of 128 a GPU step is
launch-bound; a replay launches the whole step - forwards, the method's loss, backward, every
optimiser's step, the epoch's metric sums - at once. Noise inside the step comes from torch's
default CUDA generator, which every replay advances, so each replay draws fresh noise and a
seeded run repeats. The learning-rate schedule stays on the host: it fills the optimisers'
device-tensor rates between replays (training/optimizers.py)."""

from __future__ import annotations

import torch

from kdrun.methods import Method
from kdrun.runtime import distributed
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
                    if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
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


class Stepper:
    """Takes a fit's training steps and adds them to `sums`: eagerly, or - when `capture` -
    replayed as one CUDA graph after a few eager steps (runtime/graphs.Replay; a batch of
    another shape runs eagerly, and a step that fails to capture stays eager). A method whose
    step takes several forms (`Method.step_variant`) gets a graph for each."""

    def __init__(self, method: Method, optimizers: Optimizers, run: Run, sums: EpochSums,
                 capture: bool):
        self.method, self.optimizers, self.run, self.sums = method, optimizers, run, sums
        self.capture = capture
        self.replays: dict[str | None, Replay] = {}  # one per form of the step
        if capture:
            optimizers.make_capturable(run.device)
        else:
            optimizers.use_fused(run.device)

    @property
    def captured(self) -> bool:
        return any(replay.captured for replay in self.replays.values())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 *indices: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.contiguous(memory_format=self.run.memory_format)
        variant = self.method.step_variant()
        if variant not in self.replays:
            what = "the training step" + (f" {variant}" if variant else "")
            self.replays[variant] = Replay(self.run.device, self.capture, what,
                                           on_failure=self.sums.forget_captured)
        out = self.replays[variant](self._step, images, labels, *indices)
        self.sums.keep_captured()
        self.method.step_taken()
        self.optimizers.advance()
        self.sums.count(out, len(labels))
        return out

    def _step(self, images, labels, *indices) -> dict[str, torch.Tensor]:
        """The step's outputs, detached: holding them keeps no autograd graph alive (whose
        gradient nodes would pin the warm-up's stream)."""
        out = train_step(self.method, self.optimizers, images, labels, self.run, *indices)
        self.sums.add(out, labels)
        return {key: value.detach() for key, value in out.items()}
