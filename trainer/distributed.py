"""Data-parallel training under ``torchrun``: process group from the environment, gradient averaging.

``torchrun`` sets ``WORLD_SIZE``/``RANK``; with ``WORLD_SIZE > 1`` every rank builds the same model
(same seed), takes rows ``rank::world`` of each global batch, and the gradients are all-reduced and
averaged after ``backward`` before the optimizer step. Every rank therefore applies the same update
and the parameters stay identical without DistributedDataParallel's bucketing machinery (the
embedding tables' dense gradients dominate either way). Only rank 0 writes files.

Not bit-exact with one process: each rank's loss is a mean over its own shard and the pairwise loss
only pairs rows within a shard, so the averaged gradient differs slightly from the global batch's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group (``world == 1``: plain single-process training)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (interleaved, so shards differ by at most one row)."""
        return rows[self.rank :: self.world] if self.enabled else rows

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Start every rank from rank 0's parameters (guards against any divergence at build/load)."""
        if self.enabled:
            for p in model.state_dict().values():
                dist.broadcast(p, src=0)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """All-reduce and average every gradient; a missing one counts as zero on that rank."""
        if not self.enabled:
            return
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(self.world)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_env() -> DataParallel:
    """Join the process group ``torchrun`` describes; single process otherwise.

    Gloo, also on GPU machines: the training loop keeps every tensor on the CPU today, and NCCL only
    moves CUDA tensors (a mixed ``"cpu:gloo,cuda:nccl"`` group would also route barriers through NCCL,
    one GPU per rank). Switch to that string when the loop moves the model to ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DataParallel(rank=dist.get_rank(), world=dist.get_world_size())


def shutdown(group: DataParallel) -> None:
    if group.enabled and dist.is_initialized():
        dist.destroy_process_group()
