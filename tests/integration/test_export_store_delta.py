"""``keep export --base V --gkc-redis URL`` (issue 13): a delta written straight into GKC's store, with
no bundle of its base, against a real redis-server.

The same delta as ``keep export --base V --out`` + ``keep publish`` (the bundle path), key for key: byte
for byte in one process; by 2 torchrun ranks (slow) K̂_u and K̂_i byte for byte, K̂_uc to float
rounding. What the base holds is read from the base in Redis: a base user the new export lacks, or a
base pair it would have to replace, is refused (409) on every rank before anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gkc import bundle as gkc_bundle
from gkc.local_redis import free_port
from gkc.publish import publish
from gkc.redis_store import RedisStore
from gkc.store import READY, VersionRecord
from tests.support.stage1_data import continued_world
from tests.support.version_dump import dump
from trainer.cli import main
from trainer.export_delta import DeltaSpec, NewExport, export_delta

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
#: Small batches: the ranks' spans of the seen users are real slices (20 of 40 users are seen).
BATCH = 16
EXPORT_ARGS = ["--batch-size", str(BATCH), "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return continued_world(tmp_path_factory.mktemp("store_delta"))


@pytest.fixture
def store(module_redis: str) -> Iterator[RedisStore]:
    s = RedisStore(module_redis, timeout_s=5.0)
    yield s
    s.close()


def record_of(store: RedisStore, version: int) -> VersionRecord:
    records, _ = store.records()
    return next(r for r in records if r.version == version)


def bundle_delta(
    store: RedisStore, world: dict[str, Path], base: int, rule: str, out: Path, batch: int = BATCH
) -> int:
    """The reference: ``keep export --base --out`` (one thread, the same batches) + ``keep publish``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = DeltaSpec(base=base, base_bundle=world["base_bundle"], api_url="http://unused", rule=rule)
        new = NewExport(world["cont"], batch_size=batch, progress=False)
        export_delta(new, out, spec, identity=record_of(store, base).identity)
    finally:
        torch.set_num_threads(threads)
    return publish(store, gkc_bundle.load(out), progress=False).version


def store_delta_cli(module_redis: str, world: dict[str, Path], base: int, *extra: str) -> list[str]:
    cont = str(world["cont"])
    return ["export", "--extractor", cont, "--gkc-redis", module_redis, "--base", str(base), *extra]


@pytest.fixture(scope="module")
def base_version(world: dict[str, Path], module_redis: str) -> int:
    s = RedisStore(module_redis, timeout_s=5.0)
    try:
        return publish(s, gkc_bundle.load(world["base_bundle"]), progress=False).version
    finally:
        s.close()


@pytest.mark.parametrize("rule", ["seen-pairs", "seen"])
def test_a_store_delta_is_the_bundle_delta_key_for_key(
    world: dict[str, Path],
    module_redis: str,
    store: RedisStore,
    base_version: int,
    rule: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = bundle_delta(store, world, base_version, rule, tmp_path / "delta")
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        assert (
            main([*store_delta_cli(module_redis, world, base_version, "--changed", rule), *EXPORT_ARGS]) == 0
        )
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    made = record_of(store, summary["version"])
    assert made.state == READY and made.base == record_of(store, base_version).identity
    assert made.manifest["source"]["delta"] == record_of(store, reference).manifest["source"]["delta"]
    assert made.entries == record_of(store, reference).entries == summary["entries"]
    assert 0 < summary["share"] < 1 and summary["rule"] == rule
    assert dump(store, summary["version"]) == dump(store, reference)
    # what the delta lacks reads through to the base: it holds fewer users than the base
    assert summary["delta_counts"]["users"] < record_of(store, base_version).manifest["counts"]["users"]
    for version in (summary["version"], reference):
        store.retire(version, "test done")


def _base_with(world: dict[str, Path], out: Path, *, user: bool, pair_of_seen_user: str | None) -> Path:
    """The base bundle with a user the continuation never saw, or a pair of ``pair_of_seen_user`` in a
    category the export has no pair of (the manifest, extractor included, stays the base's)."""
    b = gkc_bundle.load(world["base_bundle"])
    users, uvec = b.user_ids.tolist(), b.dequantized("users")
    uc_u, uc_c, ucvec = b.uc_user_ids.tolist(), b.uc_category_ids.tolist(), b.dequantized("ucs")
    if user:
        users, uvec = [*users, "ghost-user"], np.concatenate([uvec, uvec[:1]])
    if pair_of_seen_user is not None:
        uc_u, uc_c = [*uc_u, pair_of_seen_user], [*uc_c, "ghost-category"]
        ucvec = np.concatenate([ucvec, ucvec[:1]])
    return gkc_bundle.save(
        gkc_bundle.build(
            user_ids=users,
            user_vectors=uvec,
            item_ids=b.item_ids,
            item_vectors=b.dequantized("items"),
            uc_user_ids=uc_u,
            uc_category_ids=uc_c,
            uc_vectors=ucvec,
            source=b.manifest.source,
            metrics=b.manifest.metrics,
        ),
        out,
    )


def test_refusals_read_the_base_from_the_store(
    world: dict[str, Path],
    module_redis: str,
    store: RedisStore,
    base_version: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = {r.version for r in store.records()[0]}

    def refused(base: int, *extra: str) -> str:
        capsys.readouterr()
        assert main([*store_delta_cli(module_redis, world, base, *extra), *EXPORT_ARGS]) == 2
        return capsys.readouterr().err

    assert "takes --changed seen or seen-pairs" in refused(base_version, "--changed", "moved")
    assert "has no version 999" in refused(999, "--changed", "seen")
    # a base exported from another extractor than the one the new extractor continues
    other = publish(store, gkc_bundle.load(world["full"]), progress=False).version
    assert "must continue the base's" in refused(other, "--changed", "seen")
    # a base user the new export lacks: found in the base's key log
    ghost = publish(
        store, gkc_bundle.load(_base_with(world, tmp_path / "u", user=True, pair_of_seen_user=None))
    ).version
    assert "1 users of the base" in refused(ghost, "--changed", "seen-pairs")
    # a seen user's base pair the export lacks: `seen` would replace it, so it is refused; `seen-pairs`
    # touches only the day's pairs, and this one reads through to the base
    seen_user = _a_seen_user(world)
    odd = publish(
        store, gkc_bundle.load(_base_with(world, tmp_path / "c", user=False, pair_of_seen_user=seen_user))
    ).version
    assert f"{seen_user} / ghost-category" in refused(odd, "--changed", "seen")
    assert {r.version for r in store.records()[0]} == before | {other, ghost, odd}  # nothing begun
    capsys.readouterr()
    assert main([*store_delta_cli(module_redis, world, odd, "--changed", "seen-pairs"), *EXPORT_ARGS]) == 0
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"]
    for version in (made, other, ghost, odd):
        store.retire(version, "test done")


def _a_seen_user(world: dict[str, Path]) -> str:
    from contract.ids import canonical_ids
    from contract.log import read_log
    from contract.schema import day_of

    df = read_log(world["super"])
    days = day_of(df["ts"].to_numpy())
    return str(canonical_ids(df["user_id"].to_numpy()[days == days.min() + 2])[0])


def same_to_rounding(got: dict[bytes, object], want: dict[bytes, object]) -> None:
    """The same keys and hash fields; K̂_u and K̂_i bit for bit (every rank runs the batches one process
    runs); a K̂_uc to float rounding: the batch that holds the pairs of the users on both sides of a rank
    boundary is split in two, and a user's history is encoded in a batch of other users."""
    assert got.keys() == want.keys()
    for key, value in got.items():
        other = want[key]
        if not isinstance(value, dict):
            assert value == other, key
            continue
        assert isinstance(other, dict) and value.keys() == other.keys(), key
        for field, row in value.items():
            if field == b"u":
                assert row == other[field], key
            else:
                a, b = (np.frombuffer(v, dtype=np.float32) for v in (row, other[field]))
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(key))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [BATCH, 64])
def test_two_ranks_write_the_same_delta(
    world: dict[str, Path],
    module_redis: str,
    store: RedisStore,
    base_version: int,
    tmp_path: Path,
    batch: int,
) -> None:
    """Batch 16: each rank computes some of the 20 seen users; batch 64: rank 0 none (it still writes
    its share of nothing and takes part in the version)."""
    reference = bundle_delta(store, world, base_version, "seen-pairs", tmp_path / "delta", batch)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(free_port()), "-m", "trainer"]
    cmd += [*store_delta_cli(module_redis, world, base_version, "--changed", "seen-pairs")]
    cmd += ["--batch-size", str(batch), "--threads", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # rank 0 finalises and reports
    summary = json.loads(lines[0])
    assert summary["world_size"] == 2
    same_to_rounding(dump(store, summary["version"]), dump(store, reference))
    assert record_of(store, summary["version"]).manifest["source"]["sharded"]["ranks"] == 2
    for version in (summary["version"], reference):
        store.retire(version, "test done")
