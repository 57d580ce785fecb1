"""``keep bench delta``: what a one-day delta version writes, per rule (issue 13's delta target).

On the calibrated synthetic world (``medium``; ``tiny`` with ``--quick``), seed 0: a base extractor
pre-trained on the super-domain log without its last day (``keep pretrain --passes 1``: the day before
is held out), its one-day continuation on the whole log (``--init base --passes 1``: trains that day),
the base exported, then ``keep export --base`` of the continuation under each rule (``moved`` with ε 0,
bit-exact; ``seen``; ``seen-pairs``), each in a process of its own for its peak RSS. The base's identity
is made up (no GKC: the delta's entries do not depend on it). Per rule: the delta's entries per block,
``share`` of a full version's entries, wall time and peak RSS; ``targets_met``: a delta within 30 % of
the entries, bit-exact (``moved``) and at all (any rule).

``store``: the same ``seen-pairs`` delta written straight into GKC's store (``keep export --base V
--gkc-redis``, no bundle of the base) by 1 process and by 2 torchrun ranks, against the base published
into a private embedded Redis: wall time, peak RSS (the largest rank's), entries, and the bytes each
version takes in Redis as GKC measured them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scale import child_result

_CHILD = r"""
import json, sys, time
from pathlib import Path
from bench.procfs import own_peak_rss
from gkc import bundle as gkc_bundle
from gkc.store import VersionIdentity
from trainer.export_delta import DeltaSpec, NewExport, export_delta
root, rule = Path(sys.argv[1]), sys.argv[2]
base = root / "base_bundle"
identity = VersionIdentity(1, "0" * 16, gkc_bundle.read_manifest(base).content_checksum())
spec = DeltaSpec(base=1, base_bundle=base, api_url="http://unused", rule=rule)
t0 = time.perf_counter()
s = export_delta(NewExport(root / "cont", super_path=root / "world" / "super.parquet", progress=False),
                 root / f"delta-{rule}", spec, identity)
keep = ("entries", "full_entries", "share", "delta_counts", "full_counts")
out = {k: s[k] for k in keep}
out["seconds"] = round(time.perf_counter() - t0, 1)
out["peak_rss_mib"] = round(own_peak_rss() / 2**20, 1)
print(json.dumps(out))
"""

RULES = ("moved", "seen", "seen-pairs")

#: ``keep export --gkc-redis`` with ``ranks`` processes (torchrun for 2), its largest process's peak RSS.
_STORE_CHILD = r"""
import json, resource, subprocess, sys, time
root, url, base, ranks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
args = ["export", "--extractor", f"{root}/cont", "--super", f"{root}/world/super.parquet",
        "--gkc-redis", url, "--base", base, "--changed", "seen-pairs", "--threads", "1", "--no-progress"]
launch = [sys.executable, "-m", "trainer"]
if ranks > 1:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
              "--master_addr", "127.0.0.1", "--master_port", sys.argv[5], "-m", "trainer"]
t0 = time.perf_counter()
done = subprocess.run([*launch, *args], capture_output=True, text=True)
if done.returncode:
    sys.exit(done.stderr[-3000:])
summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
keep = ("version", "entries", "full_entries", "share", "delta_counts", "world_size")
out = {k: summary[k] for k in keep}
out["seconds"] = round(time.perf_counter() - t0, 1)
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
print(json.dumps(out))
"""


def _store(root: Path) -> dict[str, Any]:
    """The base published into a private Redis, then the seen-pairs delta straight into it, 1 and 2
    ranks (module docstring)."""
    from gkc import bundle as gkc_bundle
    from gkc.local_redis import EmbeddedRedis, free_port
    from gkc.publish import publish
    from gkc.redis_store import RedisStore

    server = EmbeddedRedis(root / "redis", persistent=False).start()
    store = RedisStore(server.url, timeout_s=10.0)
    try:
        t0 = time.perf_counter()
        base = publish(store, gkc_bundle.load(root / "base_bundle", mmap=True), progress=False).version
        out: dict[str, Any] = {"publish_base_seconds": round(time.perf_counter() - t0, 1)}
        for ranks in (1, 2):
            got = child_result(_STORE_CHILD, str(root), server.url, str(base), str(ranks), str(free_port()))
            out[f"ranks_{ranks}"] = got
        sizes = {r.version: r.size_bytes for r in store.records()[0]}
        out["base_bytes"] = sizes[base]
        for ranks in (1, 2):
            out[f"ranks_{ranks}"]["bytes"] = sizes[out[f"ranks_{ranks}"]["version"]]
        return out
    finally:
        store.close()
        server.stop()


def _setup(root: Path, scale: str) -> dict[str, float]:
    """The world, the base and its continuation, the base's bundle; seconds per step."""
    from contract.log import read_log, write_log
    from contract.schema import day_of
    from trainer.data.synth import generate, write_world
    from trainer.export import export
    from trainer.pretrain import PretrainConfig, pretrain

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    paths = write_world(generate(scale, 0, progress=False), root / "world")
    super_df = read_log(paths["super"])
    days = day_of(super_df["ts"].to_numpy())
    write_log(super_df[days < days.max()].reset_index(drop=True), root / "first.parquet")
    del super_df
    seconds["world"] = round(time.perf_counter() - t0, 1)
    for name, log, init in (("base", root / "first.parquet", None), ("cont", paths["super"], root / "base")):
        t0 = time.perf_counter()
        cfg = PretrainConfig(super_path=log, out=root / name, passes=1, init=init, progress=False)
        pretrain(cfg)
        seconds[f"pretrain_{name}"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    export(root / "base", root / "base_bundle", super_path=root / "first.parquet", progress=False)
    seconds["export_base"] = round(time.perf_counter() - t0, 1)
    return seconds


def _delta(root: Path, rule: str) -> dict[str, Any]:
    return child_result(_CHILD, str(root), rule)


def run(args: argparse.Namespace) -> dict[str, Any]:
    scale = "tiny" if args.quick else "medium"
    with tempfile.TemporaryDirectory(prefix="keep-bench-delta-") as tmp:
        root = Path(tmp)
        setup = _setup(root, scale)
        rules = {rule: _delta(root, rule) for rule in RULES}
        store = _store(root)
    return {
        "scale": scale,
        "setup_seconds": setup,
        "rules": rules,
        "store": store,
        "targets_met": {
            "delta_le_30pct_bit_exact": rules["moved"]["share"] <= 0.3,
            "delta_le_30pct_any_rule": min(r["share"] for r in rules.values()) <= 0.3,
        },
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
