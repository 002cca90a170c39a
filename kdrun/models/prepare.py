"""One way to put networks on the run's device: training and `mode=eval` both call `prepare`, so
a saved model is measured exactly as the run that made it measured it (same memory format, same
compilation)."""

from __future__ import annotations

from torch import nn

from kdrun.models.classifier import Classifier
from kdrun.runtime.run import Run


def prepare(module: nn.Module, run: Run) -> nn.Module:
    """`module` (a network, or a method holding several) on the run's device in its memory
    format, every network compiled when the run compiles. Networks compiled earlier (a cached
    teacher, an earlier stage) are left as they are, so state_dict keys never change."""
    module.to(run.device, memory_format=run.memory_format)
    if run.compile:
        for network in module.modules():
            if isinstance(network, Classifier) and network._compiled_call_impl is None:
                network.compile()
    return module
