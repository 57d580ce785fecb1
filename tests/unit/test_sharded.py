"""The sharded id tables in one process (a world of one): initial values, checkpoint round trips
(gathered, and in per-rank pieces)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contract.extractor import ExtractorConfig
from trainer.models import checkpoint as ckpt
from trainer.models.checkpoint import save_state
from trainer.models.strategies import build_extractor
from trainer.models.tables import from_canonical, to_canonical
from trainer.shard_files import Piece, PiecedTable
from trainer.sharded import checkpoint_state, gather_state, load_state, local_shards, process_group, shard

CFG = ExtractorConfig(n_users=70_000, n_items=50, n_shops=20, n_categories=10, strategy="serving")


def test_sharded_tables_start_as_the_unsharded_model_and_round_trip_through_a_checkpoint() -> None:
    with process_group():
        torch.manual_seed(0)
        sharded = shard(build_extractor(CFG, materialize=False), 1e-3)
        shards = local_shards(sharded)
        state = gather_state(sharded)
        assert state is not None
        torch.manual_seed(1)
        other = shard(build_extractor(CFG, materialize=False), 1e-3)
        load_state(other, state)
        again = gather_state(other)
    # one process holds both column halves of the user table and every other table whole
    assert shards["user"] == [[0, 0, CFG.n_users, 24], [0, 24, CFG.n_users, 24]]
    assert shards["item"] == [[0, 0, CFG.n_items, 16]]
    torch.manual_seed(0)
    reference = to_canonical(build_extractor(CFG).state_dict())  # tables drawn whole (> one block)
    assert reference.keys() == state["model"].keys()
    for key, value in reference.items():
        assert torch.equal(value, state["model"][key]), key
    assert again is not None
    for key, value in state["model"].items():
        assert torch.equal(value, again["model"][key]), key
    model = build_extractor(CFG)
    model.load_state_dict(from_canonical(state["model"]))  # what export does with a checkpoint


def checkpointed(root: Path, step: int) -> dict[str, Any]:
    """A fresh sharded model's checkpoint in ``root`` (pieces + checkpoint.pt); its gathered state.
    Call inside ``process_group()``."""
    torch.manual_seed(0)
    sharded = shard(build_extractor(CFG, materialize=False), 1e-3)
    gathered = gather_state(sharded)
    part = checkpoint_state(sharded, root, step=step)
    assert gathered is not None and part is not None
    save_state(root, part, {"batches_done": step})
    return gathered


def test_a_checkpoint_in_pieces_reads_back_as_the_gathered_state(tmp_path: Path) -> None:
    """Each rank's pieces (here one rank holding both user column halves) read back, whole or by
    region, equal to what gathering gives, optimizer state included; loading them by region into
    another sharded model gives it the same state."""
    with process_group():
        gathered = checkpointed(tmp_path, 3)
        whole = ckpt.load_state(tmp_path)
        lazy = ckpt.load_state(tmp_path, pieces=True)
        torch.manual_seed(1)
        other = shard(build_extractor(CFG, materialize=False), 1e-3)
        load_state(other, lazy)
        again = gather_state(other)
    assert again is not None
    for state in (whole, again):
        assert state["model"].keys() == gathered["model"].keys()
        for key, value in gathered["model"].items():
            assert torch.equal(value, state["model"][key]), key
        for key, entry in gathered["optimizer"]["sparse"].items():
            for name, value in entry.items():
                assert torch.equal(value, state["optimizer"]["sparse"][key][name]), (key, name)
    user = lazy["model"]["embeddings.user.weight"]
    assert isinstance(user, PiecedTable) and len(user.pieces) == 2  # the two column shards
    rows = user.region([10, 20], [5, 8])  # crosses the column shards' border at 24
    assert torch.equal(rows, gathered["model"]["embeddings.user.weight"][10:15, 20:28])


def test_an_inference_model_reads_the_pieces_in_place_and_scores_as_the_gathered_one(tmp_path: Path) -> None:
    """What export and the run's held-out scoring build: a table kept in one piece is the memory-mapped
    piece itself (no copy), the column-split user table one copy; the scores equal a model loaded the
    old way (random tables, then the gathered state copied in); a state missing a table is refused."""
    with process_group():
        gathered = checkpointed(tmp_path, 1)
    lazy = ckpt.load_state(tmp_path, mmap=True, pieces=True)
    model = ckpt.inference_model(CFG, lazy["model"])
    old = build_extractor(CFG)
    old.load_state_dict(from_canonical(gathered["model"]))
    old.eval()
    item = model.embeddings.table("item")
    piece = lazy["model"]["embeddings.item.weight"].pieces[0].values
    assert item.data_ptr() == piece.ctypes.data  # the mapping itself, not a copy
    user = model.embeddings.table("user")
    assert torch.equal(user, gathered["model"]["embeddings.user.weight"])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    g = torch.Generator().manual_seed(0)
    users = torch.randint(0, CFG.n_users, (64,), generator=g)
    items = torch.randint(2, CFG.n_items, (64,), generator=g)
    with torch.inference_mode():
        for name, ids in (("user", users), ("item", items)):
            assert torch.equal(model.embeddings.lookup(name, ids), old.embeddings.lookup(name, ids)), name
    del lazy["model"]["embeddings.shop.weight"]
    with pytest.raises(ckpt.CheckpointError, match=r"missing \['embeddings.shop.weight'\]"):
        ckpt.inference_model(CFG, lazy["model"])


def test_a_region_no_piece_covers_is_refused() -> None:
    table = PiecedTable((4, 6), (Piece((0, 0), np.ones((4, 3), np.float32)),), np.dtype(np.float32))
    assert torch.equal(table.region([1, 0], [2, 3]), torch.ones(2, 3))
    with pytest.raises(ValueError, match="cover 6 of 12 values"):
        table.region([1, 0], [2, 6])
