"""Distributed data parallel set-up from ``torchrun`` environment variables, and the few collectives we need.

``torchrun --nproc_per_node N train.py ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain ``python``
run has none of them and is a one-process "world". The backend is NCCL on CUDA and gloo on CPU. Every helper is a
no-op (or the identity) when the world has one process, so library code can call them unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import FaceNASError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a one-process run).
        local_rank: rank on this machine; selects the GPU.
        world_size: number of processes.
        device: the device this process computes on.
        backend: ``nccl``, ``gloo`` or ``""`` when not distributed.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (world size > 1, or a one-process torchrun job)."""
        return bool(self.backend)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise FaceNASError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The device for ``--device``: ``auto``/None -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.

    ``cuda`` without an index also takes ``LOCAL_RANK`` so that every torchrun process gets its own GPU.
    """
    name = (device or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FaceNASError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FaceNASError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = local_rank if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise FaceNASError(f"--device {device}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise FaceNASError(f"--device {device}: only cpu and cuda are supported")
    return dev


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Read the torchrun variables, pick the device, and join the process group when launched by torchrun.

    Args:
        device: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
        timeout_s: collective timeout.

    Returns:
        The :class:`DistInfo` of this process.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        return DistInfo(0, 0, 1, dev, "")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, local_rank, world_size, dev, backend)


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when not distributed)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group (safe to call more than once)."""
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average ``tensor`` over all processes, in place, and return it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size
    return tensor


def broadcast_object(obj: object, info: DistInfo, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every process and return it."""
    if not info.distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=info.device if info.backend == "nccl" else None)
    return holder[0]


def split_batch(batch_size: int, info: DistInfo, option: str = "--batch-size") -> int:
    """Images per process of a global batch: ``batch_size`` is over all processes and must divide evenly.

    Raises:
        FaceNASError: when the batch does not divide among the processes.
    """
    if batch_size < 1:
        raise FaceNASError(f"{option} must be >= 1, got {batch_size}")
    if batch_size % info.world_size:
        raise FaceNASError(f"{option} {batch_size} is the batch over all processes and must divide evenly among the "
                           f"{info.world_size} processes; use a multiple of {info.world_size}")
    return batch_size // info.world_size


def convert_sync_batchnorm(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``--sync-bn``: every BatchNorm of ``model`` computes its batch statistics over all processes (call before DDP).

    A one-process run has nothing to synchronise and gets ``model`` back unchanged. PyTorch's ``SyncBatchNorm`` runs
    on GPUs only, so a multi-process CPU (gloo) run is refused rather than failing at the first training step. The
    converted layers keep BatchNorm's state-dict names, so checkpoints load into the plain model.

    Raises:
        FaceNASError: several processes on the CPU.
    """
    if not sync_batchnorm_applies(info):
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def sync_batchnorm_applies(info: DistInfo) -> bool:
    """Whether ``--sync-bn`` changes anything in this job: False with one process; an error for CPU processes.

    Raises:
        FaceNASError: several processes on the CPU (``SyncBatchNorm`` has no CPU implementation).
    """
    if info.world_size <= 1:
        return False
    if info.device.type != "cuda":
        raise FaceNASError(f"--sync-bn needs CUDA processes: PyTorch's SyncBatchNorm runs on GPUs only, and these "
                           f"{info.world_size} processes run on {info.device.type} ({info.backend or 'no backend'}); "
                           "drop --sync-bn")
    return True


def describe_world(info: DistInfo, batch_size: int) -> str:
    """One log line: world size, backend and the split of the global batch."""
    per_process = batch_size // max(1, info.world_size)
    backend = f", {info.backend}" if info.backend else ""
    return f"world size {info.world_size}{backend}: batch {batch_size} = {info.world_size} x {per_process} per process"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` (or ``torch.compile``) wrapper."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model
