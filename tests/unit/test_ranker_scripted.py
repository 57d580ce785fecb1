"""The TorchScript serving graph (``ranker.scripted``) gives the eager model's scores bit for bit.

The graph re-states the serving path for the TorchScript compiler, so every configuration the ranker can
load is compared with the eager model on the shapes it serves: histories full, short, empty; 2 to 500
candidates; with and without a plug-in, its knowledge or the base model (``knowledge=None``), the user
id, a plug-in layer other than the first. Speed is measured by ``keep bench ranker``, never here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import ranker_world as synthetic
from contract import artifact as artifact_mod
from contract.downstream import DownstreamConfig
from ranker import scripted
from ranker.history import EMPTY_HISTORY, History
from ranker.model import Batch, DownstreamModel, PlugIn
from ranker.scoring import Scorer

USERS, ITEMS, CATEGORIES, SHOPS, HIST = 12, 300, 9, 7, 50


def model(plugin: bool, user_id: bool, plugin_layer: int = 1, seed: int = 0) -> DownstreamModel:
    cfg = DownstreamConfig(
        n_users=USERS, n_items=ITEMS, n_categories=CATEGORIES, n_shops=SHOPS, use_user_id=user_id,
        mlp=(32, 16, 8), plugin_layer=plugin_layer, max_len=HIST,
    )  # fmt: skip
    if plugin:
        cfg = cfg.with_plugin("gkc", 24)
    torch.manual_seed(seed)
    out = DownstreamModel(cfg)
    with torch.no_grad():
        for param in out.parameters():  # the plug-in's zero-initialised last layer too
            param.add_(torch.randn_like(param) * 0.1)
        for plugin_module in out.plugins.values():
            assert isinstance(plugin_module, PlugIn)
            plugin_module.mean.normal_()
            plugin_module.scale.uniform_(0.5, 2.0)
    return out.eval()


def batch(n: int, history: int, seed: int) -> Batch:
    """One user's request as ``Scorer.encode`` lays it out: user and history with leading dim 1."""
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(2, ITEMS, (1, max(history, 1)), generator=g) * (1 if history else 0)
    return Batch(
        user=torch.randint(0, USERS, (1,), generator=g),
        item=torch.randint(1, ITEMS, (n,), generator=g),  # OOV (1) among them
        category=torch.randint(1, CATEGORIES, (n,), generator=g),
        shop=torch.randint(0, SHOPS, (n,), generator=g),
        hist_item=hist,
        hist_category=torch.randint(2, CATEGORIES, hist.shape, generator=g) * (hist > 0),
    )


def eager_logits(m: DownstreamModel, b: Batch, knowledge: torch.Tensor | None) -> torch.Tensor:
    with torch.inference_mode():
        h_m = m.before_plugins(b)
        return m.after_plugins(h_m, None if knowledge is None else {"gkc": knowledge})


def graph_logits(g: torch.jit.ScriptModule, b: Batch, knowledge: torch.Tensor | None) -> torch.Tensor:
    with scripted.run():
        h_m = g.before(b.user, b.item, b.category, b.shop, b.hist_item, b.hist_category)
        return g.after(h_m, knowledge)


@pytest.mark.parametrize(
    ("plugin", "user_id", "plugin_layer"), [(True, False, 1), (True, True, 2), (False, True, 1)]
)
def test_the_graph_equals_the_eager_model_bit_for_bit(plugin: bool, user_id: bool, plugin_layer: int) -> None:
    m = model(plugin, user_id, plugin_layer)
    g = scripted.script(m)
    compared = 0
    for n in (2, 37, 500):
        for history in (HIST, 3, 0):
            b = batch(n, history, seed=n * 100 + history)
            knowledge = torch.randn(n, 24, generator=torch.Generator().manual_seed(n))
            for k in (knowledge, None) if plugin else (None,):
                want, got = eager_logits(m, b, k), graph_logits(g, b, k)
                assert torch.equal(want, got), (n, history, k is None, (want - got).abs().max())
                compared += 1
    assert compared == (18 if plugin else 9)
    if plugin:  # the comparison can fail: knowledge changes the logits, and the graph sees it
        b = batch(37, HIST, seed=1)
        k = torch.randn(37, 24)
        assert not torch.equal(graph_logits(g, b, k), graph_logits(g, b, None))


def test_the_graph_shares_the_model_parameters() -> None:
    """A model whose weights change (nothing in the ranker does; the contract) is seen by its graph."""
    m = model(True, False)
    g = scripted.script(m)
    b, k = batch(20, HIST, seed=3), torch.randn(20, 24)
    before = graph_logits(g, b, k)
    with torch.no_grad():
        m.over.logit.bias.add_(1.0)
    assert torch.allclose(graph_logits(g, b, k), before + 1.0, atol=1e-5)


def test_threads_share_one_graph() -> None:
    """Two model workers call the same scripted graph at once (the ranker's default)."""
    m = model(True, True)
    g = scripted.script(m)
    work = [
        (batch(200, HIST, seed=s), torch.randn(200, 24, generator=torch.Generator().manual_seed(s)))
        for s in range(6)
    ]
    want = [eager_logits(m, b, k) for b, k in work]
    got: dict[int, list[torch.Tensor]] = {}

    def worker(t: int) -> None:
        got[t] = [graph_logits(g, b, k) for _ in range(5) for b, k in work]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in range(2):
        for i, logits in enumerate(got[k]):
            assert torch.equal(logits, want[i % len(work)])


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scripted")
    log = synthetic.make_log(users=20, items=300, categories=9, rows_per_user=40)
    bundle = synthetic.make_bundle(root / "bundle", users=20, items=300, categories=9, dim=8, uc_dim=4)
    return synthetic.make_artifact(root / "ctr", log, bundle, 1)


@pytest.mark.parametrize("n", [1, 2, 500])
def test_a_scripted_scorer_scores_as_the_eager_one(artifact_dir: Path, n: int) -> None:
    """Through ``Scorer`` (what the ranker calls): one candidate goes the eager way, more the graph's."""
    eager = Scorer(artifact_mod.load(artifact_dir))
    fast = Scorer(artifact_mod.load(artifact_dir), torchscript=True)
    assert eager.graph is None and fast.graph is not None and fast.knowledge is not None
    fast.warm_up()
    rng = np.random.default_rng(n)
    items = rng.integers(0, 320, n)
    history = History([f"i{k * 7 % 300}" for k in range(60)], [f"c{k * 7 % 9}" for k in range(60)])
    for hist in (history, EMPTY_HISTORY):
        args = (
            "u3",
            hist,
            [f"i{i}" for i in items],
            [f"c{i % 9}" for i in items],
            [f"s{i % 7}" for i in items],
        )
        knowledge = rng.normal(size=(n, fast.knowledge[1].schema.dim)).astype(np.float32)
        for k in (knowledge, None):
            want = eager.score(eager.encode(*args), k)
            got = fast.score(fast.encode(*args), k)
            assert np.array_equal(want, got)
