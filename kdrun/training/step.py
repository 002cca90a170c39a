"""The training step, as every run and scripts/bench.py takes it: eagerly, or on CUDA captured
once as a CUDA graph and replayed. At the papers' batch of 128 a GPU step is launch-bound
(Python and kernel launches, not arithmetic, set the pace); a replay launches the whole step -
forwards, the method's loss, backward, every optimiser's step, the epoch's metric sums - at
once. Randomness inside the step comes from torch's default CUDA generator, which the graph
advances on every replay, so each replay draws fresh noise and a seeded run repeats. The
learning-rate schedule stays on the host: it fills the optimisers' device-tensor rates
between replays (training/optimizers.py)."""

from __future__ import annotations

import logging

import torch

from kdrun.methods import Method
from kdrun.runtime import distributed
from kdrun.runtime.run import Run
from kdrun.training.optimizers import Optimizers

log = logging.getLogger(__name__)
# eager steps before the capture: lazy initialisation (optimiser state, cuDNN's algorithm
# search, torch.compile's first compilation) must not happen inside it
WARMUP_STEPS = 3
NOT_LOGGED = ("logits", "labels")


def train_step(method: Method, optimizers: Optimizers, images: torch.Tensor,
               labels: torch.Tensor, run: Run) -> dict[str, torch.Tensor]:
    """One optimisation step's device work (the schedule's step is the caller's)."""
    images = images.contiguous(memory_format=run.memory_format)
    with run.autocast():
        out = method.training_step(images, labels)
    optimizers.update(out)
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

    def add(self, out: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Device work only."""
        n = len(labels)
        targets = out.get("labels", labels)  # a method may re-encode its labels
        self.correct += (out["logits"].detach().argmax(dim=1) == targets).sum()
        for key, value in out.items():
            if key not in NOT_LOGGED:
                if key not in self.totals:
                    self.totals[key] = torch.zeros((), device=self.device)
                self.totals[key] += value.detach().float() * n

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
    eagerly for WARMUP_STEPS steps, then as one CUDA graph captured on the next batch and
    replayed for every batch of the same shape after it (a batch of another shape runs
    eagerly). A step that fails to capture says why in one log line and stays eager."""

    def __init__(self, method: Method, optimizers: Optimizers, run: Run, sums: EpochSums,
                 capture: bool):
        self.method, self.optimizers, self.run, self.sums = method, optimizers, run, sums
        self.capture = capture
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None  # the graph's inputs
        self.static_out: dict[str, torch.Tensor] = {}
        if capture:
            optimizers.make_capturable(run.device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.graph is not None and images.shape == self.static[0].shape:
            self.static[0].copy_(images)
            self.static[1].copy_(labels)
            self.graph.replay()
            out = self.static_out
        elif self.capture and self.graph is None and self.eager_steps >= WARMUP_STEPS:
            out = self._capture(images, labels)
        else:
            out = self._eager(images, labels)
        self.optimizers.advance()
        self.sums.count(out, len(labels))
        return out

    def _step(self, images, labels) -> dict[str, torch.Tensor]:
        """The step's outputs, detached: holding them keeps no autograd graph alive (whose
        gradient nodes would pin the warm-up's stream)."""
        out = train_step(self.method, self.optimizers, images, labels, self.run)
        self.sums.add(out, labels)
        return {key: value.detach() for key, value in out.items()}

    def _eager(self, images, labels) -> dict[str, torch.Tensor]:
        self.eager_steps += 1
        if not self.capture:
            return self._step(images, labels)
        # warm-up on a side stream, as the capture will run, so lazily made state is its own
        side, main = torch.cuda.Stream(self.run.device), torch.cuda.current_stream(self.run.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self._step(images, labels)
        main.wait_stream(side)
        return out

    def _capture(self, images, labels) -> dict[str, torch.Tensor]:
        self.static = (images.contiguous(memory_format=self.run.memory_format).clone(),
                       labels.clone())
        graph = torch.cuda.CUDAGraph()
        summed = set(self.sums.totals)
        try:
            # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self._step(*self.static)
        except RuntimeError as error:
            self.capture, self.static = False, None
            for key in set(self.sums.totals) - summed:  # made in the failed graph's memory
                del self.sums.totals[key]
            torch.cuda.synchronize(self.run.device)
            reason = (str(error).strip() or repr(error)).splitlines()[0]
            log.warning("the training step could not be captured as a CUDA graph (%s): "
                        "training eagerly", reason)
            return self._step(images, labels)
        self.graph, self.static_out = graph, out
        graph.replay()  # the capture only recorded the step: now take it
        log.info("training step captured as one CUDA graph (batch %d), replayed from here",
                 len(labels))
        return out
