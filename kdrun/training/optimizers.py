"""The optimisers of a run: the run's own optimiser for the parameters a method trains on
'loss', plus one per parameter group the method declares (`Method.optimizer_groups`), each
minimising its own 'loss/<group>'. All follow the run's learning-rate schedule, stepped once
per batch. Under torch.distributed the gradients are averaged across ranks before the step."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from kdrun.methods import Method
from kdrun.methods.base import Schedule
from kdrun.runtime import distributed
from kdrun.training.schedule import build_scheduler

MAIN = "main"


class Optimizers:
    def __init__(self, method: Method, optim: DictConfig, sched: DictConfig, length: Schedule):
        groups = method.optimizer_groups()
        claimed = {id(p) for group in groups.values() for p in group.params}
        main = [p for p in method.parameters() if p.requires_grad and id(p) not in claimed]
        self.params = {MAIN: main, **{name: list(g.params) for name, g in groups.items()}}
        configs = {MAIN: optim, **{name: g.optim for name, g in groups.items()}}
        self.optimizers = {name: instantiate(configs[name])(params)
                           for name, params in self.params.items()}
        main_lr = self.optimizers[MAIN].param_groups[0]["lr"]
        self.schedulers = {name: build_scheduler(sched, opt, length, main_lr)
                           for name, opt in self.optimizers.items()}

    def step(self, out: dict[str, torch.Tensor]) -> None:
        """Backward of each group's loss into that group's parameters only (a generator's loss
        must not train the discriminator it fools), then one optimiser and schedule step."""
        losses = {MAIN: out["loss"]}
        losses.update({name: out[f"loss/{name}"] for name in self.params
                       if f"loss/{name}" in out})
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        if len(self.params) == 1:
            out["loss"].backward()
        else:
            names = list(losses)
            for i, name in enumerate(names):
                losses[name].backward(inputs=self.params[name], retain_graph=i < len(names) - 1)
        for params in self.params.values():
            distributed.average_gradients(params)
        for optimizer in self.optimizers.values():  # a group without a loss has no gradients:
            optimizer.step()                         # its step is a no-op
        for scheduler in self.schedulers.values():
            scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizers[MAIN].param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {name: {"optimizer": opt.state_dict(),
                       "scheduler": self.schedulers[name].state_dict()}
                for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name]["optimizer"])
            self.schedulers[name].load_state_dict(state[name]["scheduler"])
