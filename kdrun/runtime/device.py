"""Where and how numbers are computed: device, autocast precision, memory format, whether to
compile, seeds."""

from __future__ import annotations

import contextlib
import functools
import random

import numpy as np
import torch


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: where bf16 autocast measured ~2x fp32 for the zoo's CNNs."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Without autocast's cache of cast weights: a CUDA graph must not capture it (its casts
    would be freed between replays), and one setting everywhere keeps compiled networks from
    recompiling on it; a CNN's forward casts each weight once anyway."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's default generators as a run draws from them: the CPU's, and the device's."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class RandomStream:
    """A run's own stream of torch's default generators, for runs that share a process (the
    members of a pack): `active()` puts it in place for the run's work and keeps where it got
    to, so each run draws exactly what it would draw alone. Not inside a CUDA graph, whose
    replays advance the one default CUDA generator."""

    def __init__(self, device: torch.device):
        self.device = device
        self.state = random_state(device)  # from where the process's streams are now

    @contextlib.contextmanager
    def active(self):
        outside = random_state(self.device)
        set_random_state(self.state, self.device)
        try:
            yield
        finally:
            self.state = random_state(self.device)
            set_random_state(outside, self.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """torch.compile by default on CUDA only: on CPU each network's first compilation takes
    tens of seconds, more than the short runs CPUs are used for save (long ones gain: see
    scripts/bench.py)."""
    return device.type == "cuda" if setting is None else setting


def resolve_cuda_graph(setting: bool | None, device: torch.device) -> bool:
    """Capture the training step as a CUDA graph: by default wherever there is CUDA (the papers'
    batch of 128 is launch-bound on a GPU); true asks for it and is refused off CUDA."""
    return device.type == "cuda" if setting is None else setting
