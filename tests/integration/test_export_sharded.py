"""``keep export --gkc-redis`` under torchrun: each rank writes its slice straight into GKC's store.

Against a private, real redis-server: the version 2 ranks publish reads back bit-exact equal to a
single-process export + publish (the REST path) of the same checkpoint, key for key; a real GKC serves
it to a 2-rank ``keep train`` (each rank fetching its own rows); a rank killed mid-write leaves no
ready version (it stays staging, the janitor deletes it) and a rerun publishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from contract import artifact as artifact_mod
from contract import quantize as quant
from contract.log import read_log
from gkc import bundle as gkc_bundle
from gkc.janitor import Janitor
from gkc.local_redis import free_port
from gkc.publish import publish
from gkc.redis_store import RedisStore
from gkc.store import READY, RETIRING, STAGING
from services.errors import Unavailable
from tests.support.stage1_data import write_tiny
from tests.support.version_dump import dump
from trainer.cli import main
from trainer.export import export
from trainer.export_store import ShardedExportError, export_to_store
from trainer.models.checkpoint import load_extractor

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SIZE = {"users": 40, "items": 60, "categories": 5, "days": 4, "rows_per_day": 800}
#: Small batches: each block spans several batches, so the ranks' spans are real slices.
EXPORT_ARGS = ["--batch-size", "16", "--threads", "1", "--no-progress"]
TRAIN_ARGS = ["--batch-size", "255", "--no-progress"]

KILL_RANK_1 = """
import os, signal, sys
from gkc import redis_store
if os.environ["RANK"] == "1":
    write = redis_store.RedisStore.write_users
    def write_then_die(self, *args, **kwargs):
        write(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    redis_store.RedisStore.write_users = write_then_die
from trainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A serving extractor pre-trained by 2 ranks (the README's torchrun pretrain)."""
    root = tmp_path_factory.mktemp("sharded")
    path = write_tiny(root / "super.parquet", **SIZE)
    out = root / "serving"
    args = ["pretrain", "--super", str(path), "--out", str(out), "--strategy", "serving"]
    done = torchrun([*args, "--batch-size", "200", "--no-progress"])
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture
def store(module_redis: str) -> Iterator[RedisStore]:
    s = RedisStore(module_redis, timeout_s=5.0)
    yield s
    s.close()


def torchrun(args: list[str], script: Path | None = None) -> subprocess.CompletedProcess[str]:
    entry = [str(script)] if script else ["-m", "trainer"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), *entry, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def state_of(store: RedisStore, version: int) -> str | None:
    records, _ = store.records()
    return next((r.state for r in records if r.version == version), None)


@dataclass(frozen=True)
class Published:
    bundle: Path
    single: int  # export + publish (the REST path)
    sharded: int  # keep export --gkc-redis under torchrun, 2 ranks
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def published(
    checkpoint: Path, module_redis: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    store = RedisStore(module_redis, timeout_s=5.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks run one thread each: same kernels, same bits
    try:
        path, _ = export(
            checkpoint, tmp_path_factory.mktemp("single") / "bundle", batch_size=16, progress=False
        )
    finally:
        torch.set_num_threads(threads)
    single = publish(store, gkc_bundle.load(path), progress=False).version
    store.close()
    done = torchrun(["export", "--extractor", str(checkpoint), "--gkc-redis", module_redis, *EXPORT_ARGS])
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout  # rank 0 finalises and reports
    summary = json.loads(lines[0])
    yield Published(path, single, summary["version"], summary)


def test_two_ranks_publish_the_same_bytes_as_one_process(
    published: Published,
    checkpoint: Path,
    store: RedisStore,
    module_redis: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary, sharded, single = published.summary, published.sharded, published.single
    assert summary["world_size"] == 2 and state_of(store, sharded) == READY
    m = gkc_bundle.read_manifest(published.bundle)
    assert summary["entries"] == m.counts.users + m.counts.items + m.counts.user_categories

    expected = dump(store, single)
    assert len(expected) == m.counts.users + m.counts.items  # one hash per user, one string per item
    assert dump(store, sharded) == expected

    records = {r.version: r for r in store.records()[0]}
    got = records[sharded].manifest
    assert got["counts"] == records[single].manifest["counts"]
    assert got["dims"] == records[single].manifest["dims"]
    assert got["source"]["sharded"] == {"ranks": 2, "batch_size": 16}
    assert {k.split("/")[0] for k in got["checksums"]} == {"shard0", "shard1"}

    # One process through the same command (no torchrun): the same bytes again.
    assert main(["export", "--extractor", str(checkpoint), "--gkc-redis", module_redis, *EXPORT_ARGS]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["world_size"] == 1 and dump(store, alone["version"]) == expected


def test_two_rank_training_through_gkc_matches_one_process_on_the_bundle(
    published: Published,
    checkpoint: Path,
    module_redis: str,
    start_gkc: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``keep train`` under torchrun, each rank fetching its rows' K̂ from a real GKC (gRPC) serving the
    sharded version, equals one process reading the single-process bundle (same bytes)."""
    svc = start_gkc(module_redis)
    log = str(checkpoint.parent / "super.parquet")
    common = ["--train", log, "--knowledge-version", str(published.sharded), *TRAIN_ARGS]
    done = torchrun(["train", "--gkc", svc.grpc_addr, "--out", str(tmp_path / "two"), *common])
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["world_size"] == 2
    argv = ["train", "--bundle", str(published.bundle), "--out", str(tmp_path / "one"), *common]
    assert main([*argv, "--threads", "1"]) == 0
    capsys.readouterr()
    one, two = artifact_mod.load(tmp_path / "one"), artifact_mod.load(tmp_path / "two")
    assert two.knowledge["gkc"].version == one.knowledge["gkc"].version == published.sharded
    assert two.knowledge["gkc"].schema == one.knowledge["gkc"].schema
    diff = sum(float(((one.state[k].double() - two.state[k].double()) ** 2).sum()) for k in one.state)
    norm = sum(float((one.state[k].double() ** 2).sum()) for k in one.state)
    assert (diff / norm) ** 0.5 < 1e-3  # float rounding only (see tests/unit/test_train_ddp.py)


def test_a_killed_rank_leaves_no_visible_version_and_a_rerun_publishes(
    checkpoint: Path, store: RedisStore, module_redis: str, tmp_path: Path
) -> None:
    records, active = store.records()
    ready_before = {r.version for r in records if r.state == READY}
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    args = ["export", "--extractor", str(checkpoint), "--gkc-redis", module_redis, *EXPORT_ARGS]
    done = torchrun(args, script)
    assert done.returncode != 0
    records, active_after = store.records()
    assert active_after == active
    assert {r.version for r in records if r.state == READY} == ready_before  # never ready
    new = [r for r in records if r.version not in ready_before]
    # rank 0 saw its peer die and removed the version at once, or left it staging for the janitor
    assert len(new) <= 1 and all(r.state in (STAGING, RETIRING) for r in new), new
    Janitor(store, lease_s=0, delete_after_s=0).run_once()  # abandoned, then deleted
    records, _ = store.records()
    assert [r for r in records if r.version not in ready_before] == []
    orphans = [
        k
        for k in store.client.scan_iter(match="gkc:v*")
        if not k.decode().startswith(tuple(r.namespace for r in records))
    ]
    assert orphans == []  # no key outside the ready versions' namespaces
    last = int(store.client.get("gkc:{reg}:next") or 0)

    retry = torchrun(args)
    assert retry.returncode == 0, retry.stderr[-4000:]
    version = json.loads(retry.stdout.strip().splitlines()[-1])["version"]
    assert state_of(store, version) == READY and version > last


def test_a_rank_that_fails_gets_its_version_retired(
    checkpoint: Path, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank whose writes fail reports it; the finaliser removes the version instead of promoting it
    (its keys and its registry entry go at once: nothing was ever served from it)."""

    def down(*args: object) -> int:
        raise Unavailable("redis went away")

    ext = load_extractor(checkpoint)
    df = read_log(checkpoint.parent / "super.parquet")
    monkeypatch.setattr(store, "write_items", down)
    with pytest.raises(ShardedExportError, match="rank 0: Unavailable: redis went away"):
        export_to_store(ext, df, store, source=checkpoint.parent, batch_size=16, progress=False)
    records, _ = store.records()
    assert all(r.state == READY for r in records)
    assert not [
        k
        for k in store.client.scan_iter(match="gkc:v*")
        if not any(k.decode().startswith(r.namespace) for r in records)
    ]


def test_two_ranks_at_int8_publish_the_bytes_of_the_bundle_stored_at_int8(
    published: Published,
    checkpoint: Path,
    store: RedisStore,
    module_redis: str,
    tmp_path: Path,
) -> None:
    """``keep export --gkc-redis --dtype int8`` under torchrun stores what publishing the float32 bundle
    converted to int8 stores, bit for bit (issue 13: quantizing is row by row, the same on every rank)."""
    from gkc.bundle_writer import convert

    done = torchrun(
        [
            "export",
            "--extractor",
            str(checkpoint),
            "--gkc-redis",
            module_redis,
            "--dtype",
            "int8",
            *EXPORT_ARGS,
        ]
    )
    assert done.returncode == 0, done.stderr[-4000:]
    sharded = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))["version"]
    converted = gkc_bundle.load(convert(gkc_bundle.load(published.bundle), "int8", tmp_path / "int8"))
    single = publish(store, converted, progress=False, max_ready=10).version
    records = {r.version: r for r in store.records()[0]}
    assert records[sharded].dtype == records[single].dtype == "int8"
    assert dump(store, sharded) == dump(store, single)
    width = quant.row_bytes("int8", converted.manifest.dims.user)  # dim codes + a float32 scale
    users = [v for k, v in dump(store, sharded).items() if k.startswith(b"u:") and b"u" in v]  # type: ignore[operator]
    assert users and all(len(v[b"u"]) == width for v in users)  # type: ignore[index]
    for version in (sharded, single):
        store.retire(version, "test done")
