"""Data-parallel training and sharded export under ``torchrun``: process group, sharding, collectives.

``torchrun`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; with ``WORLD_SIZE > 1`` every rank builds the
same model (same seed, then rank 0's parameters are broadcast), takes rows ``rank::world`` of each
global batch, and the gradients are all-reduced and averaged after ``backward`` before the optimizer
step. Every rank therefore applies the same update and the parameters stay identical without
DistributedDataParallel's bucketing machinery (the embedding tables' dense gradients dominate either
way). Only rank 0 writes files.

Exactness: a loss that is a mean over the shard, scaled by :meth:`DataParallel.weight`, makes the
averaged gradient the global batch's mean gradient (``keep train``: equal to one process up to float
rounding). Pre-training's pairwise loss only pairs rows within a shard and its conversion/cart heads
average over each shard's clicks, so there the result differs slightly from one process.

Backends (:func:`choose_backend`): gloo by default. ``KEEP_DIST_BACKEND=nccl`` (or ``backend="nccl"``)
on a machine with CUDA gives the mixed group ``"cpu:gloo,cuda:nccl"`` and ``device = cuda:LOCAL_RANK``
(one GPU per rank): CUDA tensors are reduced by NCCL, CPU tensors (knowledge rows, small objects, and
the gradients of a loop that keeps its model on the CPU, as pre-training does today) by gloo. Asking
for NCCL without CUDA falls back to gloo with a warning. The NCCL path is not exercised by the tests
(no GPU on the CI machine).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from services.errors import InvalidArgument

log = logging.getLogger(__name__)

BACKEND_ENV = "KEEP_DIST_BACKEND"
BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the group (``world == 1``: plain single-process training)."""

    rank: int = 0
    world: int = 1
    #: Where the training loop keeps the model: ``cpu``, or ``cuda:LOCAL_RANK`` under NCCL.
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch (interleaved, so shards differ by at most one row)."""
        return rows[self.rank :: self.world] if self.enabled else rows

    def weight(self, n_local: int, n_global: int) -> float:
        """Scale for a shard's mean loss so that averaged gradients equal the global batch's mean:
        ``world * n_local / n_global`` (exactly 1.0 in one process)."""
        return self.world * n_local / n_global if self.enabled else 1.0

    def span(self, n: int, block: int = 1) -> tuple[int, int]:
        """This rank's contiguous ``[lo, hi)`` of ``n`` rows, cut at multiples of ``block`` rows.

        With ``block`` = the batch size every rank computes exactly the batches one process would
        (same rows together), so per-row results are bit-identical to a single-process run."""
        blocks = -(-n // block)
        lo, hi = self.rank * blocks // self.world, (self.rank + 1) * blocks // self.world
        return min(lo * block, n), min(hi * block, n)

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

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (small, picklable objects: a version number, a result)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (small, picklable objects)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        """Concatenate every rank's :meth:`span` of an ``[n, ...]`` array (each rank computed its own).

        Chunks are padded to the longest one for gloo's equal-size ``all_gather`` and trimmed after."""
        if not self.enabled:
            return local
        spans = [DataParallel(r, self.world).span(n) for r in range(self.world)]
        longest = max(hi - lo for lo, hi in spans)
        padded = np.zeros((longest, *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local
        mine = torch.from_numpy(padded)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine)
        return np.concatenate([p.numpy()[: hi - lo] for p, (lo, hi) in zip(parts, spans, strict=True)])


def choose_backend(requested: str | None, *, cuda: bool, local_rank: int = 0) -> tuple[str, str]:
    """(process-group backend, device) for ``requested`` (``None``: ``$KEEP_DIST_BACKEND`` or gloo)."""
    name = (requested or os.environ.get(BACKEND_ENV) or "gloo").strip().lower()
    if name not in BACKENDS:
        raise InvalidArgument(f"unknown distributed backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "nccl":
        if cuda:
            return "cpu:gloo,cuda:nccl", f"cuda:{local_rank}"
        log.warning("NCCL asked for but CUDA is not available; using gloo on the CPU")
    return "gloo", "cpu"


def from_env(backend: str | None = None) -> DataParallel:
    """Join the process group ``torchrun`` describes; single process (on the CPU) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    group_backend, device = choose_backend(backend, cuda=torch.cuda.is_available(), local_rank=local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(group_backend)
    return DataParallel(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def shutdown(group: DataParallel) -> None:
    """Leave the group so that the process can exit cleanly.

    Why the pause: a gloo worker thread frees each finished collective *after* ``wait()`` returned,
    and freeing a tensor whose Python wrapper is already gone (a gradient of a model that went out of
    scope) needs the GIL. If the interpreter is finalizing by then the thread is killed inside a
    ``noexcept`` destructor and the process aborts ("terminate called without an active exception",
    exit -6, seen about 1 run in 10; found with gdb on a core file). The barrier makes every rank's
    last collective complete, and sleeping releases the GIL so the worker threads finish their
    clean-up before ``main`` returns."""
    if group.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        time.sleep(0.2)


#: ``--threads`` default. One thread per process: on a shared 2-core machine ``keep pretrain`` on the
#: tiny world took 29.5 s with 1 thread and 115 s with 2 (load average 7-10), because idle torch
#: threads spin on cores other jobs need; more threads pay off only on idle cores (``--threads 0``).
DEFAULT_THREADS = 1


def set_threads(threads: int = DEFAULT_THREADS) -> int:
    """torch intra-op threads for this process: ``threads`` if > 0, else this rank's share of the
    cores (the cores divided by torchrun's ``WORLD_SIZE``). Returns the number set."""
    if threads < 0:
        raise InvalidArgument(f"--threads must be >= 0, got {threads}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = threads if threads > 0 else max(1, (os.cpu_count() or 1) // max(1, world))
    torch.set_num_threads(n)
    return n
