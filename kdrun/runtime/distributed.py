"""Data-parallel training across processes (torchrun, or a SLURM job with one task per GPU).

Every rank holds the whole method; `trainer.batch_size` is the global batch, and each rank
trains on its share of every global batch. After each backward the gradients are averaged
across ranks, one all-reduce per optimiser group, so the step equals the single-process step
on the global batch. This is done here rather than by wrapping the method in torch's
DistributedDataParallel class: its reducer expects every trained parameter to receive a
gradient in every backward pass, which AFD's discriminator updates on alternate steps and the
per-group `backward(inputs=...)` break. BatchNorm buffers are averaged before each evaluation
and checkpoint. With one process, every function here does nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from kdrun.errors import ConfigError

T = TypeVar("T")


def launched_world_size() -> int:
    """The process count the launcher asked for (readable before the group is joined)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _export_slurm_tasks() -> None:
    """A submitit (SLURM) job with several tasks: the torchrun-style variables for its ranks."""
    if os.environ.get("SUBMITIT_EXECUTOR") is None or "WORLD_SIZE" in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    environment = TorchDistributedEnvironment()
    if environment.world_size > 1:
        environment.export(set_cuda_visible_devices=False)


def init() -> None:
    """Joins the process group the launcher set up (gloo on CPU, NCCL for CUDA tensors)."""
    if dist.is_initialized():
        return
    _export_slurm_tasks()
    if launched_world_size() <= 1:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """Each rank's own GPU when the run asks for CUDA."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def local_batch_size(batch_size: int, key: str) -> int:
    """Each rank's share of a global batch; the global batch must split evenly."""
    world = launched_world_size()
    if batch_size % world:
        raise ConfigError(f"{key}={batch_size} does not split over {world} processes: set it "
                          f"to a multiple of {world}")
    return batch_size // world


def from_main(make: Callable[[], T]) -> T:
    """`make()` run on rank 0 only, its result handed to every rank (files read once, state
    every rank must share)."""
    if world_size() == 1:
        return make()
    box = [make() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def copy_from_main(module: nn.Module) -> None:
    """Rank 0's parameters and buffers in every rank's copy of `module`, the buffers a state
    dict leaves out included (a Classifier's input mean/std, which a published teacher's file
    sets)."""
    if world_size() == 1:
        return
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    state = from_main(lambda: {k: v.detach().cpu() for k, v in tensors.items()})
    with torch.no_grad():
        for key, tensor in tensors.items():
            tensor.copy_(state[key])


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, decoding caches), the others after it."""
    if not is_main():
        dist.barrier()
    yield
    if is_main() and world_size() > 1:
        dist.barrier()


def synchronise_batchnorm(module: nn.Module) -> None:
    """`trainer.sync_bn`: the BatchNorm layers of every trained network compute their batch
    statistics over the global batch (frozen networks, such as a teacher, are left alone)."""
    trained = [m for m in module.children() if any(p.requires_grad for p in m.parameters())]
    for child in trained:
        nn.SyncBatchNorm.convert_sync_batchnorm(child)


def _all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(part.view_as(tensor))


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """The mean of every rank's gradients, in place (parameters left without a gradient on
    this step stay so: which ones those are is the same on every rank)."""
    if world_size() > 1:
        _all_reduce_mean([p.grad for p in parameters if p.grad is not None])


def average_buffers(module: nn.Module) -> None:
    """BatchNorm running statistics averaged over ranks, so every rank evaluates and saves
    the same model. Other buffers are the same on every rank already (a memory bank moved by
    the global batch): all-reducing them would cost their size every epoch."""
    if world_size() > 1:
        _all_reduce_mean([stat for m in module.modules()
                          if isinstance(m, nn.modules.batchnorm._BatchNorm)
                          and m.track_running_stats
                          for stat in (m.running_mean, m.running_var)])


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's `values` (any length) concatenated, on every rank."""
    if world_size() == 1:
        return values
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, values.cpu())
    return torch.cat(parts).to(values.device)


def gather_batch(values: torch.Tensor) -> torch.Tensor:
    """Every rank's `values` of one shape (its share of a batch) concatenated in rank order, on
    every rank, on the device: no host copy."""
    if world_size() == 1:
        return values
    parts = [torch.empty_like(values) for _ in range(world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def every_rank(value: T) -> list[T]:
    """Each rank's `value`, in rank order, on every rank (small objects: RNG states)."""
    if world_size() == 1:
        return [value]
    values: list = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def shard_indices(n: int) -> torch.Tensor:
    """This rank's part of n items (evaluation: each rank scores a part, sums are reduced)."""
    return torch.tensor_split(torch.arange(n), world_size())[rank()]
