"""An exponential moving average of a network's weights, kept as tf.train.ExponentialMovingAverage
keeps it with `num_updates` (Noisy Student's official code evaluates and pseudo-labels with the
average, decay 0.9999): after update n the effective decay is min(decay, (1 + n) / (10 + n)), so
the average follows the weights closely early on. Parameters and float buffers (BatchNorm's
running statistics) are averaged, counters copied. The update is device work only, with the
count on the device, so it runs inside a captured training step."""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage(nn.Module):
    """`network`: a copy of the averaged network's architecture, which becomes the average
    (frozen; its state starts as `source`'s)."""

    def __init__(self, network: nn.Module, source: nn.Module, decay: float):
        super().__init__()
        network.load_state_dict(source.state_dict())
        for p in network.parameters():
            p.requires_grad_(False)
        self.network = network
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """Move the average towards `source`'s current weights (device work only)."""
        self.updates += 1
        decay = torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)
        averaged, current = [], []
        for mine, theirs in zip(self.network.state_dict().values(),
                                source.state_dict().values(), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs)
            else:
                mine.copy_(theirs)
        torch._foreach_mul_(averaged, decay)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - decay))
