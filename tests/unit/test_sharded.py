"""The sharded id tables in one process (a world of one): initial values, checkpoint round trip."""

from __future__ import annotations

import torch

from contract.extractor import ExtractorConfig
from trainer.models.strategies import build_extractor
from trainer.models.tables import from_canonical, to_canonical
from trainer.sharded import gather_state, load_state, local_shards, process_group, shard

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
