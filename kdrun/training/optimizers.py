"""The optimisers of a run: the run's own optimiser for the parameters a method trains on
'loss', plus one per parameter group the method declares (`Method.optimizer_groups`), each
minimising its own 'loss/<group>'. All follow the run's learning-rate schedule, stepped once
per batch. Under torch.distributed the gradients are averaged across ranks before the step.
On CUDA the optimisers take torch's fused steps, eager or captured alike, so capturing the step
changes its speed and not its arithmetic (torch's fused and multi-tensor Adam round
differently, and Adam's normalised update turns that into visible differences within a few
steps). For a step captured as a CUDA graph (training/step.py) they are also made
`capturable`: the fused kernels read the learning rate from a device tensor, which the
schedule fills on the host, so every replay steps with the current rate."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from kdrun.methods import Method
from kdrun.methods.base import Schedule
from kdrun.runtime import distributed
from kdrun.training.schedule import build_scheduler

MAIN = "main"
# torch's optimisers whose fused CUDA kernels take the learning rate as a device tensor
FUSED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
# param_group entries that only say how a step is computed, not what it computes: left out of
# checkpoints, so a run resumes eagerly or captured alike
HOW = ("fused", "foreach", "capturable")


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
        self.device: torch.device | None = None  # set by `use_fused` / `make_capturable`
        self.capturable = False

    def uncapturable(self) -> str | None:
        """Why these optimisers cannot step inside a CUDA graph, or None."""
        for name, opt in self.optimizers.items():
            if not isinstance(opt, FUSED):
                return (f"the {name} optimiser {type(opt).__name__} has no fused CUDA step "
                        f"(use SGD, Adam or AdamW)")
        return None

    def use_fused(self, device: torch.device) -> None:
        """Fused steps on CUDA for the optimisers that have one (the CPU keeps torch's default
        steps)."""
        self.device = device
        if device.type == "cuda":
            for opt in filter(lambda opt: isinstance(opt, FUSED), self.optimizers.values()):
                for group in opt.param_groups:
                    group.update(fused=True, foreach=False)

    def make_capturable(self, device: torch.device) -> None:
        """Fused steps with the learning rate in a device tensor (state moved alongside), so
        the step can be captured once and replayed; the schedule keeps filling the rate."""
        self.device, self.capturable = device, True
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.update(fused=True, foreach=False)
                if "capturable" in group and device.type == "cuda":  # Adam's capture check
                    group["capturable"] = True
                if not isinstance(group["lr"], torch.Tensor):
                    group["lr"] = torch.tensor(float(group["lr"]), device=device)
            for state in opt.state.values():
                if isinstance(state.get("step"), torch.Tensor):  # Adam's step counter
                    state["step"] = state["step"].to(device, torch.float32)

    def step(self, out: dict[str, torch.Tensor]) -> None:
        """One training step's update: `update`, then `advance` the schedule."""
        self.update(out)
        self.advance()

    def update(self, out: dict[str, torch.Tensor]) -> None:
        """Backward of each group's loss into that group's parameters only (a generator's loss
        must not train the discriminator it fools), then one step of every optimiser: device
        work only, so it can be captured in a CUDA graph."""
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

    def advance(self) -> None:
        """The schedule's step: the next learning rate, set on the host."""
        for scheduler in self.schedulers.values():
            scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizers[MAIN].param_groups[0]["lr"])

    def state_dict(self) -> dict:
        """Learning rates as numbers and without the fused/capturable flags, whichever way the
        step ran."""
        state = {}
        for name, opt in self.optimizers.items():
            saved = opt.state_dict()
            saved["param_groups"] = [
                {k: float(v) if k == "lr" else v for k, v in group.items() if k not in HOW}
                for group in saved["param_groups"]]
            state[name] = {"optimizer": saved, "scheduler": self.schedulers[name].state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name]["optimizer"])
            self.schedulers[name].load_state_dict(state[name]["scheduler"])
        if self.capturable:
            self.make_capturable(self.device)
        elif self.device is not None:
            self.use_fused(self.device)
