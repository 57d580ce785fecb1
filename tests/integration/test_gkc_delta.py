"""Delta versions (issue 13, deliver 2) on real Redis, real REST and real gRPC: a delta over its base
reads back equal to the full export it was cut from, bit for bit; a base a ready delta depends on is
neither deleted nor retired (409); a delta naming another base identity, or a base that is gone, is
refused; deleting a delta touches only its own keys."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gkc import bundle as gkc_bundle
from gkc import delta as gkc_delta
from gkc.bundle_reader import BundleReader
from gkc.client import GkcClient, GkcOpsClient
from gkc.integrity import check_versions
from gkc.janitor import Janitor
from gkc.local_redis import EmbeddedRedis
from gkc.publish import key_count, publish
from gkc.read_path import KnowledgeCenter
from gkc.redis_store import RedisStore
from gkc.store import DAMAGED, READY, IdentityMismatch, VersionIdentity
from services.errors import Conflict, NotFound


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    srv = EmbeddedRedis(tmp_path / "redis", persistent=False).start()
    yield srv.url
    srv.stop()


def _continued(base: gkc_bundle.Bundle, seed: int = 5) -> gkc_bundle.Bundle:
    """A new export: the base's entries (a tenth of them moved), new users with pairs, new items."""
    rng = np.random.default_rng(seed)
    u, i, c = (base.dequantized(b).copy() for b in ("users", "items", "ucs"))
    for arr in (u, i, c):
        arr[::10] += rng.normal(size=arr[::10].shape).astype(np.float32)
    n_u, n_i = len(u), len(i)
    new_users = [f"u{n}" for n in range(n_u, n_u + 4)]
    return gkc_bundle.build(
        user_ids=[*base.user_ids.tolist(), *new_users],
        user_vectors=np.concatenate([u, rng.normal(size=(4, u.shape[1]))]),
        item_ids=[*base.item_ids.tolist(), *(f"i{n}" for n in range(n_i, n_i + 7))],
        item_vectors=np.concatenate([i, rng.normal(size=(7, i.shape[1]))]),
        uc_user_ids=[*base.uc_user_ids.tolist(), *new_users],
        uc_category_ids=[*base.uc_category_ids.tolist(), "c0", "c1", "c0", "c9"],
        uc_vectors=np.concatenate([c, rng.normal(size=(4, c.shape[1]))]),
        source=base.manifest.source,
        dtype=base.manifest.dtype,
    )


def _delta(new: gkc_bundle.Bundle, base: gkc_bundle.Bundle, identity: VersionIdentity) -> gkc_bundle.Bundle:
    rule = gkc_delta.Rule()
    with tempfile.TemporaryDirectory() as tmp:
        path = gkc_delta.write(new, gkc_delta.select(new, base, rule), identity, rule, Path(tmp) / "delta")
        return gkc_bundle.load(path, mmap=False)


def _identity(record: dict[str, object]) -> VersionIdentity:
    return VersionIdentity.from_json(record["identity"])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_a_delta_reads_back_as_the_full_export_through_grpc(
    start_gkc: Callable[..., object], make_bundle: Callable[..., Path], tmp_path: Path, dtype: str
) -> None:
    svc = start_gkc(None)
    ops = GkcOpsClient(svc.http_url, svc.token)  # type: ignore[attr-defined]
    base_path = make_bundle(tmp_path / "base", users=30, items=80)
    if dtype != "float32":
        base_path = gkc_bundle.save(_at(gkc_bundle.load(base_path), dtype), tmp_path / f"base-{dtype}")
    base = gkc_bundle.load(base_path)
    base_v = int(ops.publish(base_path, progress=False)["version"])
    new = _continued(base)
    delta = _delta(new, base, _identity(ops.version(base_v)))
    assert gkc_delta.entries(delta.manifest.counts) < gkc_delta.entries(new.manifest.counts) / 2
    delta_v = int(ops.publish(gkc_bundle.save(delta, tmp_path / "delta"), progress=False)["version"])
    record = ops.version(delta_v)
    assert record["base"] == _identity(ops.version(base_v)).to_json()
    assert record["entries"] == gkc_delta.entries(delta.manifest.counts)

    full = BundleReader(new)
    cats = sorted(set(new.uc_category_ids.tolist()) | {"c-none"})
    items = [*new.item_ids.tolist(), "i-none"]
    with GkcClient(svc.grpc_addr) as client:  # type: ignore[attr-defined]
        for user in [*new.user_ids.tolist(), "u-none"]:
            for start in range(0, len(items), 40):  # every item, every category, every user
                its = items[start : start + 40]
                cs = [cats[k % len(cats)] for k in range(len(its))]
                got = client.batch_get(user, its, cs, version=delta_v)
                want = full.batch_get(user, its, cs)
                assert got.version == delta_v
                for name in ("user", "user_found", "items", "item_found", "ucs", "uc_found"):
                    np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        # the base still answers as itself
        base_reader = BundleReader(base)
        got = client.batch_get("u1", items[:5], cats[:5], version=base_v)
        np.testing.assert_array_equal(got.items, base_reader.batch_get("u1", items[:5], cats[:5]).items)

    ops.activate(delta_v)  # a delta is a version like any other: active, it answers version 0
    with GkcClient(svc.grpc_addr) as client:  # type: ignore[attr-defined]
        assert client.batch_get(str(new.user_ids[-1]), items[:3], cats[:3]).version == delta_v
    with pytest.raises(Conflict, match=f"base of ready delta version {delta_v}"):
        ops.delete(base_v)  # 409 with the reason
    ops.activate(base_v)
    assert ops.delete(delta_v)["state"] == "retiring"


def _at(bundle: gkc_bundle.Bundle, dtype: str) -> gkc_bundle.Bundle:
    return gkc_bundle.build(
        user_ids=bundle.user_ids,
        user_vectors=bundle.dequantized("users"),
        item_ids=bundle.item_ids,
        item_vectors=bundle.dequantized("items"),
        uc_user_ids=bundle.uc_user_ids,
        uc_category_ids=bundle.uc_category_ids,
        uc_vectors=bundle.dequantized("ucs"),
        source=bundle.manifest.source,
        dtype=dtype,
    )


def test_registry_rules_for_bases_and_deltas(
    server: str, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    store = RedisStore(server)
    base = gkc_bundle.load(make_bundle(tmp_path / "base", seed=1, users=20, items=40))
    first = publish(store, base, progress=False)  # active
    base_r = publish(store, base, progress=False)
    assert base_r.identity is not None
    new = _continued(base)
    delta = _delta(new, base, base_r.identity)

    # a delta that names another publish (or content) of its base's number is refused before a write
    for wrong in (replace(base_r.identity, publish_id="0" * 16), replace(base_r.identity, checksum="0" * 64)):
        with pytest.raises(IdentityMismatch, match="other knowledge"):
            publish(store, replace(delta, manifest=replace(delta.manifest, base=wrong)), progress=False)
    with pytest.raises(Conflict, match="does not exist"):
        publish(
            store, replace(delta, manifest=replace(delta.manifest, base=replace(base_r.identity, number=99)))
        )

    d = publish(store, delta, progress=False)
    with pytest.raises(Conflict, match=f"base of ready delta version {d.version}"):
        store.retire(base_r.version, "test")
    # a delta over a delta is refused: chains are one deep
    assert d.identity is not None
    with pytest.raises(Conflict, match=r"one deep|itself a delta"):
        publish(store, _delta(_continued(new, 6), new, d.identity), progress=False)
    # a publish that must free a slot skips the base a ready delta depends on and retires another
    retired = publish(store, base, max_ready=3, progress=False).retired
    assert retired == [d.version]  # v1 active, v2 the delta's base: the delta itself is the oldest free
    states = {r.version: r.state for r in store.records()[0]}
    assert states[base_r.version] == READY

    # deleting a delta touches only its own keys: the base keeps every key and still reads back
    d2 = publish(store, delta, progress=False)
    ns = {r.version: r.namespace for r in store.records()[0]}
    before = store.count_keys([ns[base_r.version], ns[d2.version]])
    assert before[ns[d2.version]] == key_count(delta)
    store.retire(d2.version, "test")
    janitor = Janitor(store, lease_s=60.0, delete_after_s=0.0)
    janitor.run_once()
    after = store.count_keys([ns[base_r.version], ns[d2.version]])
    assert after == {ns[base_r.version]: before[ns[base_r.version]], ns[d2.version]: 0}
    raw = store.read(ns[base_r.version], str(base.user_ids[0]), [], [])
    assert raw.user == base.rows("users", 0, 1).tobytes()
    assert first.version in states
    store.close()


def test_a_delta_whose_base_went_away_mid_publish_is_refused_and_never_served(
    server: str, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    store = RedisStore(server)
    base = gkc_bundle.load(make_bundle(tmp_path / "base", seed=2, users=10, items=20))
    publish(store, base, progress=False)  # active
    base_r = publish(store, base, progress=False)
    assert base_r.identity is not None
    delta = _delta(_continued(base), base, base_r.identity)
    calls = {"n": 0}

    def delete_base_midway(_: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            store.retire(base_r.version, "deleted while a delta over it was written")

    with pytest.raises(Conflict, match="deleted or replaced while this delta was written"):
        publish(store, delta, progress=False, on_batch=delete_base_midway, attempts=1)
    assert not [r for r in store.records()[0] if r.base is not None and r.state == READY]

    # a ready delta whose base is damaged (or lost) is not served: NOT_FOUND naming the base
    base2 = publish(store, base, progress=False)
    assert base2.identity is not None
    d = publish(store, _delta(_continued(base), base, base2.identity), progress=False)
    center = KnowledgeCenter(store, registry_ttl_s=0.0)
    assert center.batch_get("u1", ["i1"], ["c1"], version=d.version).version == d.version
    store.mark_damaged(base2.version, "test: keys missing")
    with pytest.raises(NotFound, match="cannot be served"):
        center.batch_get("u1", ["i1"], ["c1"], version=d.version)
    # and the integrity check lists the delta damaged too, naming its base
    ready = [r for r in store.records()[0] if r.state == READY]
    assert [p for p in check_versions(store, ready, sample=False) if "its base" in p]
    assert {r.version: r.state for r in store.records()[0]}[d.version] == DAMAGED
    store.close()
