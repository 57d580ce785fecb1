"""The 2-rank checkpoint of :mod:`bench.tables` read back, each way in a fresh process
(``python -m bench.checkpoint_reads STEP WAY USERS ROOT OUT``): loaded for inference (``load``) and
continued with :data:`NEW_USERS` new users (``continue``), from its pieces against whole tensors;
both ways must give the same tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procfs

#: New user ids a measured continuation brings.
NEW_USERS = 100_000


def extractor_config(users: int) -> Any:
    from contract.extractor import ExtractorConfig

    return ExtractorConfig(
        n_users=users,
        n_items=max(users // 10, 1000),
        n_shops=1000,
        n_categories=500,
        strategy="serving",
        tasks=("click", "conversion", "cart"),
    )


def load_child(way: str, users: int, root: str, out: str) -> None:
    """Load ``root``'s checkpoint for inference one ``way`` in this fresh process, read every table
    once (as an export does) and write the figures to ``out``."""
    import torch

    from contract.ids import RESERVED
    from trainer.models import checkpoint as ckpt
    from trainer.models.strategies import build_extractor
    from trainer.models.tables import TABLES, from_canonical

    torch.set_num_threads(1)
    cfg = extractor_config(users)
    before = procfs.status()
    t0 = time.perf_counter()
    if way in ("pieces", "half"):  # half: one of 2 ranks of an export by user range, its rows alone
        rows = (0, RESERVED + users // 2) if way == "half" else None
        model = ckpt.inference_model(cfg, ckpt.load_state(Path(root), mmap=True, pieces=True)["model"], rows)
    else:  # the way it replaced: random tables, then the whole tensors read from the pieces copied in
        model = build_extractor(cfg)
        model.load_state_dict(from_canonical(ckpt.load_state(Path(root))["model"]))
        model.eval()
    seconds = time.perf_counter() - t0
    with torch.inference_mode():
        checksum = sum(float(model.embeddings.table(name).sum()) for name in TABLES)
    after = procfs.status()
    write_figures(out, seconds, before, after, checksum, kinds=True)


def continue_child(way: str, users: int, root: str, out: str) -> None:
    """Continue ``root``'s checkpoint one ``way`` in this fresh process (world of one): read the run,
    grow the user table by :data:`NEW_USERS` rows, shard it; write the figures to ``out``."""
    import numpy as np
    import torch

    from contract.ids import RESERVED, Vocab, Vocabs
    from trainer.models import checkpoint as ckpt
    from trainer.models.growth import grow_state
    from trainer.models.strategies import build_extractor
    from trainer.sharded import gather_state, process_group, shard

    torch.set_num_threads(1)
    cfg = extractor_config(users)

    def keys(rows: int) -> Vocab:
        return Vocab(np.arange(rows - RESERVED, dtype=np.int64))

    vocabs = Vocabs(
        user=keys(users + NEW_USERS),
        item=keys(cfg.n_items),
        category=keys(cfg.n_categories),
        shop=keys(cfg.n_shops),
    )
    before = procfs.status()
    t0 = time.perf_counter()
    with process_group():
        state = ckpt.load_state(Path(root), mmap=True, pieces=way == "pieces")
        grown, state, _ = grow_state(cfg, state, vocabs, seed=0)
        sharded = shard(build_extractor(grown, materialize=False), 1e-3, state=state)
        seconds = time.perf_counter() - t0
        after = procfs.status()
        del state
        gathered = gather_state(sharded)  # after the measurement: to compare the two ways
    assert gathered is not None
    checksum = sum(float(v.double().sum()) for v in gathered["model"].values() if v.is_floating_point())
    write_figures(out, seconds, before, after, checksum)


def write_figures(
    out: str,
    seconds: float,
    before: dict[str, int],
    after: dict[str, int],
    checksum: float,
    kinds: bool = False,
) -> None:
    """A child's figures into ``out``: its time, its peak RSS above ``before`` (and with ``kinds`` the
    anonymous and file-backed memory it added) and the checksum of the tables it read."""
    figures = {
        "seconds": round(seconds, 2),
        "added_peak_mib": round((after["VmHWM"] - before["VmRSS"]) / 2**20, 1),
    }
    if kinds:
        for kind in ("anon", "file"):
            key = f"Rss{kind.capitalize()}"
            figures[f"{kind}_mib"] = round((after[key] - before[key]) / 2**20, 1)
    Path(out).write_text(json.dumps({**figures, "checksum": checksum}))


def both_ways(step: str, users: int, root: Path) -> dict[str, Any]:
    """``step`` (``load`` or ``continue``) on the checkpoint in ``root`` from its pieces and from whole
    tensors, each in a fresh process; both must give the same tables."""
    out: dict[str, Any] = {}
    for way in ("pieces", "whole", "half") if step == "load" else ("pieces", "whole"):
        file = root.parent / f"{step}-{way}.json"
        args = ["-m", "bench.checkpoint_reads", step, way, str(users), str(root), str(file)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True, env=env)
        out[way] = json.loads(file.read_text())
    out.get("half", {}).pop("checksum", None)  # half of the user table: a table of its own
    if out["pieces"].pop("checksum") != out["whole"].pop("checksum"):
        raise RuntimeError(f"{step}: the two ways of reading the checkpoint gave different tables")
    return out


if __name__ == "__main__":
    if sys.argv[1] == "load":
        load_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        continue_child(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
