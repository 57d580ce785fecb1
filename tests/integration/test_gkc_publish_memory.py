"""REST publish memory (issue 13, deliver 3): the upload is written into the store as it arrives
(:mod:`gkc.publish_stream`: the ids held, the vectors a batch at a time, nothing spooled to disk in the
order ``keep publish`` sends), so the GKC process's memory does not grow with the bundle: measured on
``/proc/<pid>/status`` while a bundle of ~200 MiB of vectors is published over REST."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench import procfs
from gkc import bundle as gkc_bundle
from gkc.client import GkcOpsClient


def _status(pid: int) -> dict[str, int]:
    return {k: v for k, v in procfs.status(pid).items() if k in ("VmRSS", "RssAnon", "RssFile")}


@pytest.mark.slow
def test_rest_publish_memory_does_not_grow_with_the_bundle(
    start_gkc, make_bundle: Callable[..., Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    users, items, dim = 2_000, 200_000, 256
    built = gkc_bundle.build(
        user_ids=np.arange(users),
        user_vectors=rng.standard_normal((users, dim), dtype=np.float32),
        item_ids=np.arange(items),
        item_vectors=rng.standard_normal((items, dim), dtype=np.float32),
        uc_user_ids=np.arange(users),
        uc_category_ids=np.zeros(users, dtype=np.int64),
        uc_vectors=rng.standard_normal((users, dim), dtype=np.float32),
    )
    path = gkc_bundle.save(built, tmp_path / "big")
    del built
    vector_bytes = (users * 2 + items) * dim * 4
    svc = start_gkc(None, GKC_WORKERS="1")
    ops = GkcOpsClient(svc.http_url, svc.token)
    ops.publish(make_bundle(tmp_path / "small"), progress=False)  # code paths and imports warmed up
    pid = svc.proc.pid
    base = _status(pid)
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in _status(pid).items():
                peak[key] = max(peak[key], value)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        result = ops.publish(path, progress=False)
    finally:
        done.set()
        watcher.join(5)
    assert result["entries"] == users * 2 + items
    assert "ready (streamed, 0 members spooled)" in svc.log()
    anon = peak["RssAnon"] - base["RssAnon"]
    mib = {k: round((peak[k] - base[k]) / 2**20, 1) for k in base}
    print(f"\nPUBLISH_MEMORY vectors_mib={vector_bytes / 2**20:.0f} growth_mib={mib}")
    # the process's own memory: the ids, a batch, the sample; never the vectors
    assert anon < vector_bytes / 4, mib
    assert peak["VmRSS"] - base["VmRSS"] < 3 * vector_bytes / 4, mib
