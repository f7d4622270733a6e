"""Process-group handling for ``torchrun`` training (DDP).

``torchrun --nproc-per-node N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; a run with
``WORLD_SIZE`` > 1 joins a process group -- NCCL when it trains on CUDA, gloo on CPU. A group
that already exists (a caller's) is used as it is and left alone at the end.

SyncBatchNorm follows the reference: only the backbone's output norms (``backbone.norm1..4``)
synchronise statistics across processes; the edge ResNet's BN and the CLIP projection heads'
BN1d stay per process. gloo has no SyncBatchNorm kernels, so on CPU every BN is per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this run initialised the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the ``torchrun`` process group when there is one (``device``: the run's setting)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owned=True)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; CUDA runs use ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def convert_sync_bn(model: nn.Module) -> None:
    """The reference's SyncBN placement: the backbone's output norms only (CUDA DDP)."""
    for name in ("norm1", "norm2", "norm3", "norm4"):
        bn = getattr(model.backbone, name)
        setattr(model.backbone, name, nn.SyncBatchNorm.convert_sync_batchnorm(bn))
