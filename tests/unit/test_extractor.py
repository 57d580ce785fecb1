"""Extractor modules: shapes, masks, the split attention layer, knowledge blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from contract.extractor import ExtractorConfig
from trainer.models import FeatureBatch, build_extractor
from trainer.models.din import PackedTargetAttention

CFG = ExtractorConfig(n_users=20, n_items=30, n_shops=5, n_categories=6)


def random_batch(n: int = 12, seed: int = 0, max_len: int = 50) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    hist = torch.randint(2, 30, (n, max_len), generator=g)
    lengths = torch.randint(0, max_len + 1, (n,), generator=g)
    pad = torch.arange(max_len)[None, :] < (max_len - lengths)[:, None]
    hist = hist.masked_fill(pad, 0)
    click = torch.tensor([1.0, 0.0] * (n // 2))
    b = FeatureBatch(
        user=torch.randint(2, 20, (n,), generator=g),
        item=torch.randint(2, 30, (n,), generator=g),
        shop=torch.randint(0, 5, (n,), generator=g),
        category=torch.randint(2, 6, (n,), generator=g),
        hist_item=hist,
        hist_category=(hist % 4 + 2).masked_fill(pad, 0),
    )
    b.labels = {"click": click, "conversion": torch.zeros(n), "cart": torch.zeros(n)}
    clicked = torch.nonzero(click).squeeze(1)
    b.task_rows = {"conversion": clicked, "cart": clicked}
    return b


def test_packed_split_attention_equals_textbook_din_with_padding_masks() -> None:
    torch.manual_seed(0)
    dim, hidden = 8, (6, 4)
    att = PackedTargetAttention(dim, hidden)
    # The textbook DIN first layer over [q, k, q - k, q * k], on a padded [B, L, D] sequence.
    full = nn.Linear(4 * dim, hidden[0])
    wq, wk, wd, wp = full.weight.detach().split(dim, dim=1)
    with torch.no_grad():
        att.query_proj.weight.copy_(wq + wd)
        att.query_proj.bias.copy_(full.bias)
        att.key_proj.weight.copy_(torch.cat((wk - wd, wp), dim=1))
    q, k = torch.randn(5, dim), torch.randn(5, 7, dim) * 100  # padding holds garbage
    mask = torch.rand(5, 7) > 0.4
    mask[3] = False  # a row without history
    qq = q.unsqueeze(1).expand_as(k)
    pre = full(torch.cat((qq, k, qq - k, qq * k), dim=-1))
    scores = att.rest(pre).squeeze(-1) * mask
    expected = (scores.unsqueeze(-1) * k).sum(1)
    row = mask.nonzero()[:, 0]
    got = att(q, k[mask], row)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    assert torch.equal(got[3], torch.zeros(dim))


def test_packed_history_skips_padding() -> None:
    b = random_batch()
    row, items, cats = b.packed_history()
    assert len(row) == int(b.hist_mask.sum()) == len(items) == len(cats)
    assert (items != 0).all()
    assert torch.equal(torch.bincount(row, minlength=len(b)), b.hist_mask.sum(1))


@pytest.mark.parametrize(
    ("strategy", "heads", "blocks"),
    [
        ("full", ["click", "conversion", "cart"], {"ku": 48, "ki": 48, "kui:click": 64}),
        ("decomposition", ["click", "conversion", "cart"], {"ku_hat": 32, "ku_hat*ki_hat": 32}),
        ("degeneration", ["click", "conversion", "cart"], {"kuc_hat": 192}),
        (
            "serving",
            [f"{f}:{t}" for f in ("decomposition", "degeneration") for t in ("click", "conversion", "cart")],
            {"ku_hat": 32, "ki_hat": 32, "ku_hat*ki_hat": 32, "kuc_hat": 192},
        ),
    ],
)
def test_heads_rows_and_knowledge_blocks(strategy: str, heads: list[str], blocks: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = build_extractor(CFG.with_strategy(strategy))
    batch = random_batch()
    out = model(batch)
    assert list(out) == heads == model.heads()
    for head, logits in out.items():
        n = len(batch) if head.endswith("click") else len(batch.task_rows["conversion"])
        assert logits.shape == (n,)
        assert torch.isfinite(logits).all()
    knowledge = model.knowledge(batch, list(blocks))
    assert {k: v.shape[1] for k, v in knowledge.items()} == blocks
    assert all(v.shape[0] == len(batch) for v in knowledge.values())


def test_interaction_block_is_the_product_of_the_towers() -> None:
    model = build_extractor(CFG.with_strategy("serving"))
    k = model.knowledge(random_batch(), ["ku_hat", "ki_hat", "ku_hat*ki_hat"])
    torch.testing.assert_close(k["ku_hat*ki_hat"], k["ku_hat"] * k["ki_hat"])


def test_full_knowledge_blocks_are_the_embeddings() -> None:
    model = build_extractor(CFG)
    b = random_batch()
    k = model.knowledge(b, ["ku", "ki"])
    torch.testing.assert_close(k["ku"], model.embeddings.lookup("user", b.user))
    torch.testing.assert_close(k["ki"][:, 16:32], model.embeddings.lookup("shop", b.shop))


def test_pad_ids_read_as_zeros_and_get_no_gradient() -> None:
    """The TorchRec tables keep ``nn.Embedding(padding_idx=0)``'s contract for item, shop, category."""
    model = build_extractor(CFG)
    b = random_batch()
    b.shop[:3] = 0
    e = model.embeddings(b)
    assert torch.equal(e.shop[:3], torch.zeros(3, 16))
    e.shop.sum().backward()
    grad = model.embeddings.table("shop").grad
    assert grad is not None and torch.equal(grad[0], torch.zeros(16))


def test_unknown_block_is_a_clear_error() -> None:
    model = build_extractor(CFG.with_strategy("decomposition"))
    with pytest.raises(KeyError, match="available: ku_hat"):
        model.knowledge(random_batch(), ["kuc_hat"])


def test_config_round_trips_through_json() -> None:
    cfg = CFG.with_strategy("serving")
    assert ExtractorConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="strategy"):
        ExtractorConfig(n_users=3, n_items=3, n_shops=3, n_categories=3, strategy="bogus")


def test_empty_history_gives_finite_outputs() -> None:
    b = random_batch()
    b.hist_item = torch.zeros_like(b.hist_item)
    b.hist_category = torch.zeros_like(b.hist_category)
    for strategy in ("full", "serving"):
        out = build_extractor(CFG.with_strategy(strategy))(b)
        assert all(torch.isfinite(v).all() for v in out.values())
    assert np.all(b.hist_mask.numpy() == 0)
