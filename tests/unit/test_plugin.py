"""The plug-in network (paper eq. 5): warm start, zero output equals base, extensibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.downstream import DownstreamConfig
from ranker.model import Batch, DownstreamModel, PlugIn, load_base_into


def _batch(n: int, knowledge: dict[str, int], seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    hist = rng.integers(0, 40, size=(n, 6))
    return Batch(
        user=torch.from_numpy(rng.integers(2, 10, n)),
        item=torch.from_numpy(rng.integers(2, 40, n)),
        category=torch.from_numpy(rng.integers(2, 8, n)),
        shop=torch.zeros(n, dtype=torch.long),
        hist_item=torch.from_numpy(hist),
        hist_category=torch.from_numpy(np.where(hist > 0, rng.integers(2, 8, hist.shape), 0)),
        knowledge={
            k: torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)) for k, d in knowledge.items()
        },
    )


CFG = DownstreamConfig(n_users=10, n_items=40, n_categories=8, mlp=(32, 16))


def _trained_base() -> DownstreamModel:
    torch.manual_seed(0)
    base = DownstreamModel(CFG)
    opt = torch.optim.Adam(base.parameters(), lr=0.05)
    b = _batch(64, {})
    y = torch.from_numpy(np.random.default_rng(3).integers(0, 2, 64).astype(np.float32))
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(base(b), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return base.eval()


@pytest.mark.parametrize("layer", [1, 2])
def test_warm_start_loads_every_base_parameter_unchanged(layer: int) -> None:
    base = _trained_base()
    plugged = DownstreamModel(
        CFG.__class__(**{**CFG.to_json(), "plugin_layer": layer}).with_plugin("gkc", 12)
    )
    fresh = load_base_into(plugged, base.state_dict())
    assert fresh and all(k.startswith("plugins.gkc.") for k in fresh)
    assert plugged.base_parameter_names() == list(base.state_dict())
    own = plugged.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(own[key], value), key


def test_fresh_plugin_gives_exactly_the_base_outputs() -> None:
    base = _trained_base()
    plugged = DownstreamModel(CFG.with_plugin("gkc", 12)).eval()
    load_base_into(plugged, base.state_dict())
    batch = _batch(32, {"gkc": 12}, seed=5)
    with torch.no_grad():
        assert torch.equal(plugged(batch), base(batch))


def test_zeroed_plugin_output_equals_base_after_training() -> None:
    """Train the plug-in model, then zero only the plug-in's output layer: outputs equal the base part."""
    plugged = DownstreamModel(CFG.with_plugin("gkc", 12))
    opt = torch.optim.Adam(plugged.parameters(), lr=0.05)
    b = _batch(64, {"gkc": 12}, seed=7)
    y = (b.knowledge["gkc"][:, 0] > 0).float()
    for _ in range(10):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(plugged(b), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    plugged.eval()
    base = DownstreamModel(CFG).eval()
    base.load_state_dict({k: v for k, v in plugged.state_dict().items() if not k.startswith("plugins.")})
    with torch.no_grad():
        assert not torch.equal(plugged(b), base(b))  # the plug-in learned something
        plugin = plugged.plugins["gkc"]
        assert isinstance(plugin, PlugIn)
        plugin.out.weight.zero_()
        plugin.out.bias.zero_()
        assert torch.equal(plugged(b), base(b))


def test_second_plugin_adds_without_touching_the_first() -> None:
    one = DownstreamModel(CFG.with_plugin("gkc", 12))
    two = DownstreamModel(CFG.with_plugin("gkc", 12).with_plugin("new", 5))
    fresh = load_base_into(two, one.state_dict())
    assert fresh and all(k.startswith("plugins.new.") for k in fresh)


def test_refuses_state_missing_base_parameters_or_with_wrong_shapes() -> None:
    base = _trained_base()
    state = base.state_dict()
    plugged = DownstreamModel(CFG.with_plugin("gkc", 12))
    with pytest.raises(ValueError, match="lacks base"):
        load_base_into(plugged, {k: v for k, v in state.items() if k != "over.logit.weight"})
    bigger = DownstreamModel(CFG.__class__(**{**CFG.to_json(), "n_items": 41}))
    with pytest.raises(ValueError, match="does not fit"):
        load_base_into(bigger, state)
    with pytest.raises(ValueError, match="does not"):
        load_base_into(base, plugged.state_dict())


def test_missing_knowledge_in_batch_is_an_error() -> None:
    plugged = DownstreamModel(CFG.with_plugin("gkc", 12))
    with pytest.raises(KeyError, match="gkc"):
        plugged(_batch(4, {}))
