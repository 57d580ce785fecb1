"""Sharded training of the extractor (issue 12 deliver 3): TorchRec for the id tables, DDP for the rest.

One code path for one process and for ``torchrun``: :func:`shard` wraps an extractor in TorchRec's
:class:`~torchrec.distributed.DistributedModelParallel` (DMP) over the default process group (under
``torchrun`` its group; in one process a private gloo group of one, :func:`process_group`).

- **Id tables** (:mod:`trainer.models.tables`): sharded by the plan of :func:`plan`: ``user`` (the
  largest, 48-d) **column-wise** in two 24-column shards, ``item``, ``shop`` and ``category``
  **table-wise** (:func:`plan`: on 2 ranks each holds one ``user`` half, rank 1 ``item``, rank 0
  ``shop`` and ``category``; in one process both halves are on it, so the model is the same function
  of the data whatever the world size: row-wise Adagrad keeps one accumulator per row *and shard*).
  Each rank allocates and initialises only its shards. Row-wise sharding needs CUDA in TorchRec and
  is not used. Gradients of the tables never go through an all-reduce: the
  lookups' all-to-all brings each row's gradient to the rank that owns it, and a **fused row-wise
  Adagrad** (FBGEMM's TBE kernel, applied inside ``backward``) updates only the rows of the batch.
  TorchRec divides the gradients its all-to-all sends back by the world size (``comm_ops``' gradient
  division, on by default), so a row gets the global batch's mean gradient, as DDP's average does.
- **Dense towers** (attention, MLPs, layer norms): replicated, wrapped by DMP in torch's
  ``DistributedDataParallel`` (bucketed gradient all-reduce overlapping ``backward``), and updated by a
  fused dense Adam (:class:`ExtractorOptimizer`).

On the CPU (FBGEMM's ``fbgemm-gpu-cpu`` kernels) TBE supports only the optimizers ``EXACT_SGD``,
``EXACT_ADAGRAD``, ``EXACT_ROWWISE_ADAGRAD`` and ``EMAINPLACE_ROWWISE_ADAGRAD``: a fused Adam fails at
sharding with ``AssertionError: Optimizer adam is not supported in CPU mode.`` Hence row-wise Adagrad
for the tables (what TorchRec's own recommendation models use).

Checkpoints are written **in pieces** (:func:`checkpoint_state`, :mod:`trainer.shard_files`): every
rank writes the table shards and optimizer-state shards it holds, rank 0 the dense part, so no rank
ever holds a whole table it does not own. Readers see the dense extractor's layout either way:
``model`` has the tables under ``embeddings.{user,item,shop,category}.weight`` (whole tensors, or
:class:`~trainer.shard_files.PiecedTable` read by region), ``optimizer`` is ``{"dense": Adam's state
dict, "sparse": {table key: {"momentum1": ...}}}``. :func:`load_state` copies each rank's regions out
of either (a resuming rank reads only its own shards' regions, whatever world size wrote them).
:func:`gather_state` (whole tables on rank 0) is what :func:`unsharded` uses for a model in memory.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from services.errors import InvalidArgument
from trainer.models.checkpoint import inference_model
from trainer.models.extractor import Extractor
from trainer.models.tables import CANONICAL, TABLES, fill_initial, table_key
from trainer.shard_files import copy_region, model_name, new_tag, sparse_name, write_pieces

# TorchRec's KeyedJaggedTensor asks torch.fx whether it is being traced, and torch 2.13 logs a
# one-time note about that question on every rank's stderr: nothing for a user to act on.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

#: The tables' fused optimizer (row-wise Adagrad: see the module doc); its learning rate is
#: ``SPARSE_LR_RATIO`` x the dense Adam's (``--lr``): 0.02 at the default 1e-3, and ``--lr 0`` freezes all.
SPARSE_OPTIMIZER = EmbOptimType.EXACT_ROWWISE_ADAGRAD
SPARSE_LR_RATIO = 20.0
#: Column shards of the user table by default (column-wise; the other tables are placed whole). A run
#: chooses its own (``--user-column-shards``, kept in its config): see :func:`check_user_shards`.
USER_COLUMN_SHARDS = 2
_INTERNAL_TABLE = {CANONICAL[table_key(name)]: name for name in TABLES}


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """The default process group TorchRec needs: torchrun's if any, else a private gloo world of one
    (an in-memory store, no port), torn down on exit."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """TorchRec 1.8 on torch 2.13: deprecation notices the caller can do nothing about."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message="`broadcast_buffers` is deprecated")
        warnings.filterwarnings("ignore", category=FutureWarning, message="Please use DTensor instead")
        yield


def _sharders(sparse_lr: float) -> list[Any]:
    fused = {"optimizer": SPARSE_OPTIMIZER, "learning_rate": sparse_lr}
    return [EmbeddingCollectionSharder(fused_params=fused), EmbeddingBagCollectionSharder(fused_params=fused)]


def check_user_shards(user_dim: int, shards: int) -> None:
    """Refuse a user-table column split FBGEMM's CPU kernels cannot run: every shard needs a width that
    is a multiple of 4 (``user_dim / shards``)."""
    if shards < 1 or user_dim % shards or (user_dim // shards) % 4:
        raise InvalidArgument(
            f"--user-column-shards {shards}: the {user_dim}-wide user table must split into shards whose "
            "width is a multiple of 4 (for 48: 1, 2, 3, 4, 6 or 12)"
        )


def plan(model: Extractor, user_shards: int = USER_COLUMN_SHARDS) -> ShardingPlan:
    """``user`` column-wise in ``user_shards`` shards over the ranks (shard ``i`` on rank ``i % world``),
    ``item`` whole on the last rank, ``shop`` and ``category`` whole on rank 0 (all fused kernels).

    A fixed plan rather than TorchRec's planner: the planner's cost model is for GPUs, and a fixed
    shard layout keeps the same model whatever the world size (row-wise Adagrad keeps one accumulator
    per row and column shard, so the shard count is part of what a run trains: it is kept in the run's
    config, and with more ranks than shards the extra ranks hold no part of ``user``)."""
    check_user_shards(model.cfg.user_dim, user_shards)
    world = dist.get_world_size()
    fused = EmbeddingComputeKernel.FUSED.value
    shape = {"local_size": world, "world_size": world, "device_type": "cpu"}
    user = construct_module_sharding_plan(
        model.embeddings.user_bags,
        {"user": column_wise(ranks=[i % world for i in range(user_shards)], compute_kernel=fused)},
        **shape,
    )
    ids = construct_module_sharding_plan(
        model.embeddings.ids,
        {
            "item": table_wise(rank=world - 1, compute_kernel=fused),
            "shop": table_wise(rank=0, compute_kernel=fused),
            "category": table_wise(rank=0, compute_kernel=fused),
        },
        **shape,
    )
    return ShardingPlan({"embeddings.user_bags": user, "embeddings.ids": ids})


class ExtractorOptimizer:
    """Dense Adam over the replicated parameters; the tables' fused optimizer steps inside backward."""

    def __init__(self, dmp: DistributedModelParallel, lr: float) -> None:
        self.dmp = dmp
        # By name, not "what the fused optimizer holds": a rank also lists (empty) parameters of the
        # tables it holds no shard of, which would make the dense parameter list, hence Adam's
        # positional state dict, differ between ranks and world sizes (a checkpoint then failed to
        # resume on another rank count, or on rank 1 of the same one).
        dense = [p for name, p in dmp.named_parameters() if name not in _INTERNAL_TABLE]
        #: ``fused``: one pass per tensor instead of ~6 foreach passes.
        self.dense = torch.optim.Adam(dense, lr=lr, fused=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()


@dataclass
class Sharded:
    """An extractor under DMP: call ``module(batch)``; ``extractor`` is the wrapped module itself."""

    module: nn.Module
    extractor: Extractor
    optimizer: ExtractorOptimizer


def shard(
    model: Extractor,
    lr: float,
    *,
    sparse_lr_ratio: float | None = None,
    user_shards: int = USER_COLUMN_SHARDS,
    state: dict[str, Any] | None = None,
) -> Sharded:
    """``model`` (tables materialised or on ``meta``) under DMP with its optimizer; the tables' learning
    rate is ``sparse_lr_ratio`` (default :data:`SPARSE_LR_RATIO`) x ``lr``; the user table in
    ``user_shards`` column shards (:func:`plan`).

    The tables are filled from ``state`` (a gathered checkpoint: ``{"model", "optimizer"}``) when given,
    else with their world-independent initial values (:func:`trainer.models.tables.fill_initial`)."""
    sharding_plan = plan(model, user_shards)
    sparse_lr = (SPARSE_LR_RATIO if sparse_lr_ratio is None else sparse_lr_ratio) * lr
    with _quiet():
        dmp = DistributedModelParallel(
            model,
            env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
            device=torch.device("cpu"),
            plan=sharding_plan,
            sharders=_sharders(sparse_lr),
        )
    optimizer = ExtractorOptimizer(dmp, lr)
    tables = _tables(dmp)
    with torch.no_grad(), _quiet():
        if state is None:
            for key, st in tables.items():
                name = _INTERNAL_TABLE[key]
                for shard_ in st.local_shards():
                    row, col = shard_.metadata.shard_offsets
                    fill_initial(model.cfg, model.embeddings.init_seed, name, shard_.tensor, row, col)
        else:
            load_state(Sharded(dmp, model, optimizer), state)
    return Sharded(dmp, model, optimizer)


def _tables(dmp: DistributedModelParallel) -> dict[str, Any]:
    return {k: v for k, v in dmp.state_dict().items() if k in _INTERNAL_TABLE}


def local_shards(sharded: Sharded) -> dict[str, list[list[int]]]:
    """This rank's shards: table → ``[[row offset, column offset, rows, columns], ...]``."""
    out: dict[str, list[list[int]]] = {}
    with _quiet():
        for key, st in _tables(sharded.module).items():
            for shard_ in st.local_shards():
                meta = shard_.metadata
                assert tuple(shard_.tensor.shape) == tuple(meta.shard_sizes)
                out.setdefault(_INTERNAL_TABLE[key], []).append([*meta.shard_offsets, *meta.shard_sizes])
    return out


def _sparse_state(dmp: DistributedModelParallel) -> dict[str, dict[str, Any]]:
    """Fused optimizer state per canonical table key: ``{"momentum1": ShardedTensor}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, entry in dmp.fused_optimizer.state_dict()["state"].items():
        name = _INTERNAL_TABLE[key]
        out[table_key(name)] = {k.split(".", 1)[1]: v for k, v in entry.items()}
    return out


def _gather(st: Any) -> torch.Tensor | None:
    full = torch.empty(tuple(st.size()), dtype=st.dtype) if dist.get_rank() == 0 else None
    st.gather(dst=0, out=full)
    return full


def _gather_sparse(dmp: DistributedModelParallel) -> dict[str, dict[str, torch.Tensor]] | None:
    """The fused optimizer's state, whole, on rank 0. A rank's fused optimizer knows only the tables it
    holds shards of, so each rank sends its local shards (offsets and values) and rank 0 assembles."""
    local = [
        (key, name, [int(o) for o in shard_.metadata.shard_offsets], shard_.tensor.detach().clone())
        for key, entry in _sparse_state(dmp).items()
        for name, st in entry.items()
        for shard_ in st.local_shards()
    ]
    parts: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(local, parts, dst=0)
    if parts is None:
        return None
    pieces = [piece for part in parts for piece in part]
    sizes: dict[tuple[str, str], list[int]] = {}
    for key, name, offsets, value in pieces:
        ends = [o + n for o, n in zip(offsets, value.shape, strict=True)]
        sizes[key, name] = [max(a, b) for a, b in zip(sizes.get((key, name), ends), ends, strict=True)]
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, name, offsets, value in pieces:
        full = out.setdefault(key, {}).setdefault(name, torch.zeros(sizes[key, name], dtype=value.dtype))
        full[tuple(slice(o, o + n) for o, n in zip(offsets, value.shape, strict=True))] = value
    return out


def _scatter(st: Any, full: Any) -> None:
    """Copy this rank's shards of ``st`` out of ``full``: a whole tensor, or anything read by region
    (:class:`~trainer.shard_files.PiecedTable`, :class:`~trainer.models.growth.GrownTable`)."""
    if tuple(st.size()) != tuple(full.shape):
        raise ValueError(f"checkpoint table of shape {tuple(full.shape)} does not fit {tuple(st.size())}")
    for shard_ in st.local_shards():  # a block of rows at a time: no whole-shard copy
        copy_region(shard_.tensor, full, shard_.metadata.shard_offsets)


def gather_state(sharded: Sharded) -> dict[str, Any] | None:
    """The model and optimizer state, whole, on rank 0 (``None`` on the others). Collective."""
    with _quiet():
        return _gather_state(sharded)


def _gather_state(sharded: Sharded) -> dict[str, Any] | None:
    model: dict[str, Any] = {}
    for key, value in sharded.module.state_dict().items():
        canonical = table_key(_INTERNAL_TABLE[key]) if key in _INTERNAL_TABLE else key
        model[canonical] = _gather(value) if key in _INTERNAL_TABLE else value.detach().clone()
    sparse = _gather_sparse(sharded.module)
    if sparse is None:
        return None
    return {"model": model, "optimizer": {"dense": sharded.optimizer.dense.state_dict(), "sparse": sparse}}


def checkpoint_state(sharded: Sharded, root: Path, step: int) -> dict[str, Any] | None:
    """Write this rank's table pieces under ``root`` (:mod:`trainer.shard_files`) and return, on rank
    0, the rest of the checkpoint: ``{"model": dense parameters, "optimizer": {"dense": ...},
    "shards": {"dir", "sizes"}}`` (``None`` on the other ranks). Collective."""
    with _quiet():
        tag: list[Any] = [new_tag(step) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(tag, src=0)
        pieces: list[dict[str, Any]] = []
        sizes: dict[str, list[int]] = {}
        dense: dict[str, Any] = {}
        for key, value in sharded.module.state_dict().items():
            if key not in _INTERNAL_TABLE:
                dense[key] = value.detach().clone()
                continue
            canonical = table_key(_INTERNAL_TABLE[key])
            sizes[model_name(canonical)] = list(value.size())
            pieces += [_piece("model", canonical, None, s) for s in value.local_shards()]
        for canonical, entry in _sparse_state(sharded.module).items():
            for name, st in entry.items():
                sizes[sparse_name(canonical, name)] = list(st.size())
                pieces += [_piece("sparse", canonical, name, s) for s in st.local_shards()]
        write_pieces(root, tag[0], dist.get_rank(), pieces)
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, sizes)  # a rank's fused optimizer knows only its own tables
        dist.barrier()  # every rank's pieces are on disk before rank 0 points the checkpoint at them
    if dist.get_rank() != 0:
        return None
    merged = {name: size for part in everyone for name, size in part.items()}
    return {
        "model": dense,
        "optimizer": {"dense": sharded.optimizer.dense.state_dict()},
        "shards": {"dir": f"shards/{tag[0]}", "sizes": merged},
    }


def _piece(kind: str, key: str, name: str | None, shard_: Any) -> dict[str, Any]:
    offsets = [int(o) for o in shard_.metadata.shard_offsets]
    return {"kind": kind, "key": key, "name": name, "offsets": offsets, "tensor": shard_.tensor}


def unsharded(sharded: Sharded, state: dict[str, Any] | None = None) -> Extractor | None:
    """A plain (unsharded) copy of the model for inference, on rank 0 (``None`` elsewhere); gathers
    ``state`` unless given (tables whole or in pieces: :func:`trainer.models.checkpoint.inference_model`
    reads them without a second copy). Why: FBGEMM's CPU kernels of the training lookup exist only
    behind autograd, so the sharded model fails under ``torch.inference_mode()`` (``NotImplementedError:
    Could not run 'fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function_pt2' with arguments
    from the 'CPU' backend``); evaluation and export read plain embedding tables instead."""
    state = gather_state(sharded) if state is None else state
    if state is None:
        return None
    return inference_model(sharded.extractor.cfg, state["model"])


def load_state(sharded: Sharded, state: dict[str, Any]) -> None:
    """Fill ``sharded`` (every rank its own shards) from a checkpoint's ``{"model", "optimizer"}``
    (tables whole or in pieces)."""
    optimizer = state["optimizer"]
    if "sparse" not in optimizer or "dense" not in optimizer:
        raise ValueError("not a sharded-trainer checkpoint (no dense/sparse optimizer state)")
    dense = {k: v for k, v in state["model"].items() if k not in CANONICAL}
    own = {k: v for k, v in sharded.module.state_dict().items() if k not in _INTERNAL_TABLE}
    if own.keys() != dense.keys():
        raise ValueError(
            f"checkpoint does not fit the model: missing {sorted(own.keys() - dense.keys())}, "
            f"unexpected {sorted(dense.keys() - own.keys())}"
        )
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(dense[key])  # the state dict's tensors share the parameters' storage
    with torch.no_grad(), _quiet():
        for key, st in _tables(sharded.module).items():
            _scatter(st, state["model"][table_key(_INTERNAL_TABLE[key])])
        for key, entry in _sparse_state(sharded.module).items():
            for name, st in entry.items():
                _scatter(st, optimizer["sparse"][key][name])
    sharded.optimizer.dense.load_state_dict(optimizer["dense"])
