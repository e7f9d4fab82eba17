"""Process-group setup and the few collectives the loop needs.

Ranks come from the torchrun environment; a plain ``python`` process becomes a world of one
(ATorch fills in RANK/WORLD_SIZE/MASTER_* when they are missing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


# Set by the operator in pods that requested GPUs: without a usable CUDA device (a driver too old
# for the image's CUDA, a GPU the device plugin did not expose) training must stop, not go on at
# CPU speed on nodes whose GPUs it holds.
REQUIRE_CUDA_ENV = "MFT_REQUIRE_CUDA"


class DeviceError(RuntimeError):
    """The pod asked for GPUs and CUDA cannot be used."""


@dataclass(frozen=True)
class World:
    rank: int
    local_rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init() -> World:
    import atorch

    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get(REQUIRE_CUDA_ENV) == "true":
        raise DeviceError(cuda_unavailable())
    if not dist.is_initialized():
        ok = atorch.init_distributed("nccl" if cuda else "gloo", set_cuda_device_using_local_rank=cuda)
        if not ok:
            raise RuntimeError("atorch.init_distributed failed; see the log above")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return World(rank=dist.get_rank(), local_rank=local_rank, size=dist.get_world_size(), device=device)


def cuda_unavailable() -> str:
    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
    return (f"this pod requested GPUs (resources.gpusPerNode) but CUDA cannot be used: torch {torch.__version__} "
            f"is built for {built_for}, and torch.cuda.is_available() is False; check the node's NVIDIA driver "
            f"(new enough for that CUDA version), the device plugin, and CUDA_VISIBLE_DEVICES "
            f"({os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``, copied without waiting for the kernels queued there.

    A copy from pageable memory synchronizes the stream, which would hold every micro-batch's
    forward pass until the previous backward finishes; from pinned memory it is queued like a kernel.
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum in place over all ranks and return the tensor (a no-op in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def gather_to_main(obj: object) -> list[object] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[object] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_gather(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
