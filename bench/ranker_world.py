"""A synthetic serving world for the ranker's benchmark and tests (numpy + torch, no trainer).

:func:`make_log` draws an impression log (ids ``u3``, ``i17``, ``c2``, ``s5``), :func:`make_bundle` a
knowledge bundle over the same ids, and :func:`make_artifact` a downstream model artifact with random
weights, pinned to a knowledge version; :func:`fill_store` puts the log's clicks into a sequence store
(the backfill's writes, without reading a file).
The plug-in's output layer is randomised too (a fresh one is zero), so knowledge changes the scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from contract import artifact as artifact_mod
from contract.downstream import DownstreamConfig
from contract.ids import Vocab, Vocabs
from contract.knowledge import KnowledgeSpec
from contract.schema import DEFAULT_MAX_LEN
from gkc import bundle as gkc_bundle
from ranker.knowledge import manifest_schema
from ranker.model import DownstreamModel
from ranker.sequence_store import backfill_batch

Log = dict[str, np.ndarray]


def item_category(items: np.ndarray, categories: int) -> np.ndarray:
    return items % categories


def make_log(
    users: int = 50, items: int = 400, categories: int = 12, rows_per_user: int = 30, seed: int = 0
) -> Log:
    """Columns of the data contract; every user's rows are at increasing ``ts`` on one day."""
    rng = np.random.default_rng(seed)
    n = users * rows_per_user
    user = np.repeat(np.arange(users), rows_per_user)
    item = rng.integers(0, items, n)
    ts = 1_700_000_000 + np.tile(np.arange(rows_per_user) * 60, users) + rng.integers(0, 30, n)
    return {
        "user_id": np.char.add("u", user.astype(str)),
        "item_id": np.char.add("i", item.astype(str)),
        "category_id": np.char.add("c", item_category(item, categories).astype(str)),
        "shop_id": np.char.add("s", (item % 7).astype(str)),
        "ts": ts.astype(np.int64),
        "click": (rng.random(n) < 0.35).astype(np.int8),
    }


def make_bundle(
    out: Path,
    users: int = 50,
    items: int = 400,
    categories: int = 12,
    dim: int = 16,
    uc_dim: int = 8,
    seed: int = 0,
    missing: float = 0.1,
) -> Path:
    """K̂ for most users/items (a ``missing`` share is absent, as cold ids are) and half the (u, c) pairs."""
    rng = np.random.default_rng(seed + 1)
    keep_u = np.flatnonzero(rng.random(users) >= missing)
    keep_i = np.flatnonzero(rng.random(items) >= missing)
    pairs = [(u, c) for u in range(users) for c in range(categories) if rng.random() < 0.5]
    built = gkc_bundle.build(
        user_ids=[f"u{u}" for u in keep_u],
        user_vectors=rng.normal(size=(len(keep_u), dim)).astype(np.float32),
        item_ids=[f"i{i}" for i in keep_i],
        item_vectors=rng.normal(size=(len(keep_i), dim)).astype(np.float32),
        uc_user_ids=[f"u{u}" for u, _ in pairs],
        uc_category_ids=[f"c{c}" for _, c in pairs],
        uc_vectors=rng.normal(size=(len(pairs), uc_dim)).astype(np.float32),
        source={"synthetic": seed},
    )
    return gkc_bundle.save(built, out)


def make_artifact(
    out: Path,
    log: Log,
    bundle_dir: Path | None,
    version: int,
    *,
    task: str = "click",
    seed: int = 0,
    max_len: int = DEFAULT_MAX_LEN,
    mlp: tuple[int, ...] = (200, 80),
) -> Path:
    """A random-weight model over ``log``'s vocabularies; with ``bundle_dir``, a GKC plug-in pinned to
    ``version``."""
    vocabs = Vocabs(
        user=Vocab.build(log["user_id"]),
        item=Vocab.build(log["item_id"]),
        category=Vocab.build(log["category_id"]),
        shop=Vocab.build(log["shop_id"]),
    )
    cfg = DownstreamConfig(
        n_users=len(vocabs.user),
        n_items=len(vocabs.item),
        n_categories=len(vocabs.category),
        n_shops=vocabs.n_shops(),
        mlp=mlp,
        max_len=max_len,
    )
    knowledge = {}
    if bundle_dir is not None:
        manifest = gkc_bundle.load(bundle_dir).manifest
        schema = manifest_schema(manifest)
        cfg = cfg.with_plugin("gkc", schema.dim)
        knowledge["gkc"] = KnowledgeSpec(
            schema=schema, version=version, source={"synthetic": 1}, checksum=manifest.content_checksum()
        )
    torch.manual_seed(seed)
    model = DownstreamModel(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("plugins.") and name.endswith(".out.weight"):
                torch.nn.init.normal_(param, std=0.2)
    art = artifact_mod.Artifact(
        config=cfg,
        task=task,
        vocabs=vocabs,
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        knowledge=knowledge,
        training=artifact_mod.TrainingInfo(seed=seed, synthetic=True),
    )
    return artifact_mod.save(art, out)


def fill_store(url: str, log: Log, max_len: int = DEFAULT_MAX_LEN, ttl_s: int = 86_400) -> int:
    """Write ``log``'s clicks into the sequence store at ``url`` as the backfill does (row number =
    arrival order); returns the number of clicks."""
    import redis

    clicked = np.flatnonzero(np.asarray(log["click"]).astype(bool))
    rows = zip(
        clicked.tolist(),
        np.asarray(log["user_id"])[clicked].astype(str).tolist(),
        np.asarray(log["item_id"])[clicked].astype(str).tolist(),
        np.asarray(log["category_id"])[clicked].astype(str).tolist(),
        np.asarray(log["ts"])[clicked].astype(np.float64).tolist(),
        strict=True,
    )
    client = redis.Redis.from_url(url)
    try:
        return backfill_batch(client, rows, max_len=max_len, ttl_s=ttl_s)
    finally:
        client.close()
