"""``keep bench scale``'s id-table part: memory and step time of the sharded tables (issue 12 item 3).

Each configuration runs in fresh processes (``torchrun`` for 2 and 4 ranks, gloo on the CPU, 1 thread per
rank) on a synthetic extractor of the production shape (``serving``, three tasks) with ``users`` user
ids (4M by default; 200k with ``--quick``) and a tenth as many items:

- ``sharded``: ``keep pretrain``'s path (:mod:`trainer.sharded`: TorchRec tables, fused row-wise
  Adagrad, DDP for the dense towers), the user table in 2 column shards (1 and 2 ranks) and in 4
  (``sharded_w4``: 4 ranks, ``--user-column-shards 4``);
- ``dense``: the trainer it replaced, measured in the same run: the same tables read as plain
  embeddings, dense gradients and one dense Adam over every parameter, the gradients of everything
  (tables included) all-reduced tensor by tensor (``DataParallel.average_gradients``).

Per rank (``sharded``), one checkpoint: what it adds to the rank's memory and takes, written in
per-rank pieces (``keep pretrain``'s way) and gathered whole on rank 0 (the way it replaced).

``continuation`` (:mod:`bench.checkpoint_reads`, as ``inference_load``): the 2-rank checkpoint
continued in one process as ``keep pretrain --init`` does with its ``NEW_USERS`` new user ids (read
the run's state, grow the user table, shard it, a fresh process each way): from the pieces by region
(``keep pretrain``'s way) against whole tensors read first.

``inference_load``: the 2-rank checkpoint loaded for inference (what ``keep export`` and the held-out
scoring at a run's end build), each way in a fresh process, every table then read once: from the
pieces (:func:`trainer.models.checkpoint.inference_model`: tables on ``meta``, one-piece tables
memory-mapped, the user table's column pieces copied once) against the way it replaced (a module with
random tables, the whole tensors read from the pieces, copied in), and ``half``: the first half of the
users' rows alone (one of 2 ranks of ``keep export --gkc-redis``). ``added_peak_mib``: the process's
peak RSS above its RSS before; ``anon_mib``: its anonymous memory after (what cannot be given back
without swap; memory-mapped pages are the page cache's).

Per rank: RSS before the model, after it is built (``tables_mib``: what its tables and their optimizer
state hold, the dense towers being ~10 MiB), and the peak over the timed steps; the mean step time and
the share of it spent in the all-reduce (``dense``: the timed ``average_gradients`` call; ``sharded``:
one minus the step time under DDP's ``no_sync`` over the step time with it, since DDP overlaps its
all-reduce with ``backward``: noisy on a loaded machine, hence also ``allreduce_mib_per_step``, what
a step all-reduces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import procfs
from bench.checkpoint_reads import both_ways, extractor_config

BATCH = 2000
STEPS = 4


def _rss_mib() -> float:
    return procfs.status().get("VmRSS", float("nan")) / 2**20


def _batch(users: int, items: int, rank: int, step: int) -> Any:
    import torch

    from trainer.models.batch import FeatureBatch

    g = torch.Generator().manual_seed(1000 * step + rank)
    n = BATCH // int(os.environ.get("WORLD_SIZE", "1"))
    lengths = torch.randint(0, 51, (n,), generator=g)
    hist = torch.randint(2, items, (n, 50), generator=g)
    hist[torch.arange(50)[None, :] < (50 - lengths)[:, None]] = 0  # left-padded, as make_batch gives
    b = FeatureBatch(
        user=torch.randint(2, users, (n,), generator=g),
        item=torch.randint(2, items, (n,), generator=g),
        shop=torch.randint(2, 1000, (n,), generator=g),
        category=torch.randint(2, 500, (n,), generator=g),
        hist_item=hist,
        hist_category=torch.where(hist > 0, hist % 498 + 2, 0),
    )
    clicks = torch.rand(n, generator=g) < 0.2
    for task, p in (("click", 1.0), ("conversion", 0.1), ("cart", 0.2)):
        b.labels[task] = (clicks & (torch.rand(n, generator=g) < p)).float()
        if task != "click":
            b.task_rows[task] = clicks.nonzero()[:, 0]
    return b


def child(kind: str, users: int, out: str, user_shards: int = 2) -> None:
    """One rank of one configuration; writes its figures to ``out/<rank>.json`` (and, ``sharded``, its
    checkpoint under ``out/checkpoint``)."""
    import contextlib

    import torch

    from trainer.distributed import from_env, shutdown
    from trainer.models.strategies import build_extractor
    from trainer.pretrain_steps import train_step
    from trainer.sharded import process_group, shard

    torch.set_num_threads(1)
    group = from_env()
    cfg = extractor_config(users)
    items = cfg.n_items
    tasks = cfg.tasks
    before = _rss_mib()
    reduce_s = 0.0
    model: torch.nn.Module
    optimizer: Any
    ddp: Any = None
    with process_group():
        torch.manual_seed(0)
        if kind == "sharded":
            sharded = shard(build_extractor(cfg, materialize=False), 1e-3, user_shards=user_shards)
            model, optimizer = sharded.module, sharded.optimizer
            ddp = model._dmp_wrapped_module
        else:
            model = build_extractor(cfg)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        built = _rss_mib()
        model.train()
        reduced = optimizer.dense.param_groups[0]["params"] if kind == "sharded" else list(model.parameters())

        def step(i: int, sync: bool = True) -> float:
            nonlocal reduce_s
            b = _batch(users, items, group.rank, i)
            t0 = time.perf_counter()
            if kind == "sharded":
                with contextlib.nullcontext() if sync else ddp.no_sync():
                    train_step(model, optimizer, b, tasks, 0.0, group)
            else:
                outputs = model(b)
                loss = torch.stack(
                    [
                        torch.nn.functional.binary_cross_entropy_with_logits(
                            v, b.task_labels(h.rsplit(":", 1)[-1])
                        )
                        for h, v in outputs.items()
                    ]
                ).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t1 = time.perf_counter()
                group.average_gradients(model)
                reduce_s += time.perf_counter() - t1
                optimizer.step()
            return time.perf_counter() - t0

        step(0)  # warm-up: first touches of the tables' pages, kernel set-up
        reduce_s = 0.0
        synced = [step(1 + i) for i in range(STEPS)]
        result: dict[str, Any] = {
            "rank": group.rank,
            "rss_before_mib": round(before, 1),
            "tables_mib": round(built - before, 1),
            "step_s": round(sum(synced) / len(synced), 3),
            "samples_per_s": round(BATCH * len(synced) / sum(synced), 1),
            # what each step all-reduces: the dense towers (sharded) or every parameter (dense)
            "allreduce_mib_per_step": round(sum(p.numel() for p in reduced) * 4 / 2**20, 1),
        }
        if kind == "sharded" and group.enabled:
            unsynced = [step(1 + STEPS + i, sync=False) for i in range(STEPS)]
            result["step_no_sync_s"] = round(sum(unsynced) / len(unsynced), 3)
            result["allreduce_share"] = round(max(0.0, 1 - sum(unsynced) / sum(synced)), 3)
        elif kind == "dense" and group.enabled:
            result["allreduce_share"] = round(reduce_s / sum(synced), 3)
        result["peak_rss_mib"] = round(procfs.own_peak_rss() / 2**20, 1)
        if kind == "sharded":
            result["checkpoint"] = _checkpoint_cost(sharded, Path(out, "checkpoint"), group.rank)
        Path(out, f"{group.rank}.json").write_text(json.dumps(result))
    shutdown(group)


def _checkpoint_cost(sharded: Any, root: Path, rank: int) -> dict[str, Any]:
    """What one checkpoint (left in ``root``) adds to this rank's memory (RSS sampled every 5 ms, above
    the RSS before) and takes: written in per-rank pieces (``trainer.shard_files``, what ``keep
    pretrain`` does) and, for comparison, gathered whole on rank 0 (what it did before)."""
    from trainer.models.checkpoint import save_state
    from trainer.sharded import checkpoint_state, gather_state

    def measured(fn: Any) -> dict[str, float]:
        before, peak, done = _rss_mib(), [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], _rss_mib())

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        kept = fn()
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_mib())
        del kept
        return {"seconds": round(seconds, 2), "added_peak_mib": round(max(0.0, peak[0] - before), 1)}

    part: list[Any] = []
    pieces = measured(lambda: part.append(checkpoint_state(sharded, root, 1)))
    written = sum(f.stat().st_size for f in root.rglob(f"r{rank}-*.npy")) / 2**20
    if part[0] is not None:  # rank 0: the pieces are written, checkpoint.pt names them
        save_state(root, part[0], {"batches_done": 1})
    gathered = measured(lambda: gather_state(sharded))
    return {"pieces": {**pieces, "written_mib": round(written, 1)}, "gathered": gathered}


def _configuration(kind: str, users: int, world: int, user_shards: int = 2) -> dict[str, Any]:
    from gkc.local_redis import free_port

    with tempfile.TemporaryDirectory(prefix="keep-bench-tables-") as tmp:
        args = ["-m", "bench.tables", kind, str(users), tmp, str(user_shards)]
        if world > 1:
            args = [
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(world),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(free_port()),
                *args,
            ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, env=env)
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(world)]
        result: dict[str, Any] = {"world": world, "ranks": ranks}
        if kind == "sharded" and world == 2:
            result["inference_load"] = both_ways("load", users, Path(tmp, "checkpoint"))
            result["continuation"] = both_ways("continue", users, Path(tmp, "checkpoint"))
    return result


def run(quick: bool) -> dict[str, Any]:
    users = 200_000 if quick else 4_000_000
    out: dict[str, Any] = {
        "users": users,
        "items": max(users // 10, 1000),
        "batch_size": BATCH,
        "steps": STEPS,
    }
    for kind in ("sharded", "dense"):
        for world in (1, 2):
            out[f"{kind}_w{world}"] = _configuration(kind, users, world)
    # more ranks: the user table in as many column shards (--user-column-shards 4), 1/4 per rank
    out["sharded_w4"] = _configuration("sharded", users, 4, user_shards=4)
    s1, s2 = out["sharded_w1"]["ranks"][0], out["sharded_w2"]["ranks"]
    d1 = out["dense_w1"]["ranks"][0]
    out["summary"] = {
        "tables_mib_per_rank": {
            "sharded_1_rank": s1["tables_mib"],
            "sharded_2_ranks": [r["tables_mib"] for r in s2],
            "sharded_4_ranks_4_shards": [r["tables_mib"] for r in out["sharded_w4"]["ranks"]],
            "dense_1_rank": d1["tables_mib"],
            "dense_2_ranks": [r["tables_mib"] for r in out["dense_w2"]["ranks"]],
        },
        "peak_rss_mib_per_rank": {
            k: [r["peak_rss_mib"] for r in out[k]["ranks"]]
            for k in ("sharded_w1", "sharded_w2", "sharded_w4", "dense_w1", "dense_w2")
        },
        "allreduce_share_2_ranks": {
            "sharded": max(r["allreduce_share"] for r in s2),
            "dense": max(r["allreduce_share"] for r in out["dense_w2"]["ranks"]),
        },
        "samples_per_s": {
            k: round(BATCH / max(r["step_s"] for r in out[k]["ranks"]), 1)
            for k in ("sharded_w1", "sharded_w2", "dense_w1", "dense_w2")
        },
        # what a checkpoint adds to each rank's memory: its own pieces vs the tables gathered on rank 0
        "checkpoint_added_peak_mib_per_rank": {
            f"{way}_{k[-2:]}": [r["checkpoint"][way]["added_peak_mib"] for r in out[k]["ranks"]]
            for way in ("pieces", "gathered")
            for k in ("sharded_w1", "sharded_w2")
        },
        # the 2-rank checkpoint loaded for inference (export, held-out scoring): from the pieces in
        # place vs random tables + whole tensors copied in
        "inference_load": out["sharded_w2"]["inference_load"],
        # the same checkpoint continued with NEW_USERS new users (grown, sharded in one process)
        "continuation": out["sharded_w2"]["continuation"],
    }
    return out


if __name__ == "__main__":
    child(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
