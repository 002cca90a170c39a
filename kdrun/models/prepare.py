"""One way to put networks on the run's device: training and `mode=eval` both call `prepare`, so
a saved model is measured exactly as the run that made it measured it (same memory format, same
compilation)."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.models.classifier import Classifier
from kdrun.runtime.run import Run


def prepare(module: nn.Module, run: Run) -> nn.Module:
    """`module` (a network, or a method holding several) on the run's device in its memory
    format, every network compiled when the run compiles: the network inside each Classifier
    (its forward and its feature paths), after the normalisation that brings any input to the
    run's memory format. Networks
    compiled earlier (a cached teacher, an earlier stage) are left as they are, so state_dict
    keys never change."""
    module.to(run.device, memory_format=run.memory_format)
    archs = set()
    for network in module.modules():
        if isinstance(network, Classifier):
            network.memory_format = run.memory_format
            if run.compile and network.net._compiled_call_impl is None:
                network.compile_network()
            archs.add(network.arch)
    if run.compile:
        allow_recompiles(len(archs))
    return module


def allow_recompiles(architectures: int) -> None:
    """Dynamo counts recompiles per code object, and networks of one family share their
    forward's code: a WRN-40-2 teacher and a WRN-16-2 student, each in training, evaluation and
    attacks (grad on or off), would hit the limit meant for one network (it did, on an H200).
    The limit becomes dynamo's default per architecture."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILES_PER_ARCH * architectures)


RECOMPILES_PER_ARCH = 8  # dynamo's default for one code object
