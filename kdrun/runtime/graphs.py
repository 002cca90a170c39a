"""Device work captured once as a CUDA graph and replayed: the training step
(training/step.py) and DeepInversion's synthesis iteration (methods/inversion.py). Where a
GPU's pace is set by Python and kernel launches rather than arithmetic, a replay launches the
whole piece of work at once. Randomness drawn inside it comes from torch's default CUDA
generator, which every replay advances."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)
# eager calls before the capture: lazy initialisation (optimiser state, cuDNN's algorithm
# search, torch.compile's first compilation) must not happen inside it
WARMUP_STEPS = 3


class Replay:
    """Calls `fn(*inputs)`: eagerly, or - when `capture` - eagerly for WARMUP_STEPS calls (on a
    side stream, as the capture runs), then captured once as a CUDA graph on the next call's
    inputs and replayed for every later call whose inputs have the same shapes (copied into
    the graph's static inputs; other shapes run eagerly). The outputs of a replay are the
    graph's static tensors, rewritten by the next replay. A capture that fails says why in one
    log line (`what` names the work), calls `on_failure` and stays eager."""

    def __init__(self, device: torch.device, capture: bool, what: str,
                 on_failure: Callable[[], None] | None = None):
        self.device, self.capture, self.what = device, capture, what
        self.on_failure = on_failure
        self.eager_calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] = ()
        self.static_out: Any = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, fn: Callable[..., Any], *inputs: torch.Tensor) -> Any:
        if self.graph is not None and [x.shape for x in inputs] == [
                x.shape for x in self.static]:
            for static, x in zip(self.static, inputs):
                static.copy_(x)
            self.graph.replay()
            return self.static_out
        if self.capture and self.graph is None and self.eager_calls >= WARMUP_STEPS:
            return self._capture(fn, inputs)
        return self._eager(fn, inputs)

    def _eager(self, fn, inputs) -> Any:
        self.eager_calls += 1
        if not self.capture:
            return fn(*inputs)
        # warm-up on a side stream, as the capture will run, so lazily made state is its own
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = fn(*inputs)
        main.wait_stream(side)
        return out

    def _capture(self, fn, inputs) -> Any:
        self.static = tuple(x.clone() for x in inputs)  # clone keeps the memory format
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn(*self.static)
        except RuntimeError as error:
            self.capture, self.static = False, ()
            torch.cuda.synchronize(self.device)
            if self.on_failure is not None:
                self.on_failure()
            reason = (str(error).strip() or repr(error)).splitlines()[0]
            log.warning("%s could not be captured as a CUDA graph (%s): running it eagerly",
                        self.what, reason)
            return fn(*inputs)
        self.graph, self.static_out = graph, out
        graph.replay()  # the capture only recorded the work: now do it
        log.info("%s captured as one CUDA graph, replayed from here", self.what)
        return out
