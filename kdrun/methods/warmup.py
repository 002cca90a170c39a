"""A loss term's linear warm-up by epoch, as DKD's and ReviewKD's official code ramp their
distillation terms (megvii-research/mdistiller: min(epoch / warmup, 1), epochs counted from 1).
The factor is a device scalar that the (captured) step reads and the host refills once an
epoch, so a CUDA graph replays it without a sync."""

from __future__ import annotations

import torch
from torch import nn

from kdrun.data.device_loader import num_batches


class EpochRamp(nn.Module):
    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs  # of the ramp (0: none, the factor is 1 throughout)
        self.steps = 0  # training steps taken (kept in checkpoints): the ramp's clock
        self.steps_per_epoch = 1
        self.register_buffer("factor", torch.ones(()), persistent=False)
        self._refill()  # epoch 1's until `start` says how long an epoch is

    def start(self, train_size: int, batch_size: int) -> None:
        """Epochs of `train_size` images in batches of `batch_size` (a stage's training)."""
        self.steps_per_epoch = num_batches(train_size, batch_size, train=True)
        self._refill()

    def step_taken(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:  # the factor moves once an epoch
            self._refill()

    def _refill(self) -> None:
        epoch = self.steps // self.steps_per_epoch + 1
        self.factor.fill_(min(epoch / self.epochs, 1.0) if self.epochs else 1.0)

    def get_extra_state(self) -> dict[str, int]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.steps = state["steps"]
        self._refill()


class RampsUp:
    """For a Method (listed before it among the bases) that keeps an EpochRamp as
    `self.warmup`: its clock learns each stage's epoch length and moves after every step."""

    warmup: EpochRamp

    def stages(self, data, epochs, run):
        self.warmup.start(len(data.train), run.cfg.trainer.batch_size)
        yield from super().stages(data, epochs, run)

    def step_taken(self) -> None:
        super().step_taken()
        self.warmup.step_taken()
