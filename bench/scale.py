"""``keep bench scale``: peak memory and wall time of the super-domain data path on two scales.

For each scale (``small`` and ``medium``; ``tiny`` and ``small`` with ``--quick``; ``medium`` and
``large`` with ``--large``, where ``large`` runs only the steps that stream: its log does not fit the
in-memory ones, which is the point) the world is written
as day partitions (``keep data synth --partitioned``), then each step runs in a child process of its
own, so its peak RSS (``VmHWM``, :func:`bench.procfs.own_peak_rss`) is that step's alone:

- ``synth``: writing the partitioned world (one day in memory at a time);
- ``check``: ``keep data check`` over the super-domain dataset (one fragment at a time);
- ``read``: :func:`contract.log.read_log` of the whole dataset into one frame (today's pre-training);
- ``sequences``: that, plus the vocabularies and the behaviour-sequence index of every row
  (``EncodedLog.encode``), what pre-training builds before its first step;
- ``stage``: ``keep data sequences`` of the super-domain dataset (one day + each user's last clicks);
- ``pretrain_memory`` / ``pretrain_stream``: ``keep pretrain`` (one pass, ``PRETRAIN_STEPS`` Adam steps)
  on the plain dataset (read into memory) and on the sequenced one (streamed); the streamed step then
  reads and encodes every remaining day of its stream, so its peak covers the whole data path;
- ``pretrain_full``: one whole streamed pass (``rows``: the rows trained), the extractor ``export`` needs;
- ``export``: ``keep export`` of it, streaming the plain dataset (``rows``: the entries written;
  ``entries_per_s`` beside).

``rss_ratio`` is the larger scale's peak over the smaller's per step: ~1 for the streaming steps, the
row ratio for the in-memory ones.

``tables`` (:mod:`bench.tables`): RSS per rank of the id tables with 1 and 2 ranks at 4M users
(200k with ``--quick``), the all-reduce share of a step and samples/s, sharded TorchRec tables against
the dense trainer they replaced, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_CHILD = r"""
import json, sys, time
from bench.procfs import own_peak_rss
step, path, scale = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
rows = None
if step == "synth":
    from trainer.data.synth import write_world_partitioned
    _, truth = write_world_partitioned(scale, path, seed=0, progress=False)
    rows = truth["sizes"]["super"]["rows"]
elif step == "check":
    from contract.log import summarise_log
    rows = summarise_log(path + "/super")["rows"]
elif step == "stage":
    from trainer.data.sequence_stage import sequence_log
    rows = sequence_log(path + "/super", path + "/super_seq").rows_written
elif step == "export":  # the extractor pretrain_full trained, exported from the plain dataset
    from pathlib import Path
    from trainer.export import export
    _, stats = export(Path(path) / "pretrain_full", Path(path) / "bundle", super_path=path + "/super",
                      progress=False)
    rows = stats.users + stats.items + stats.user_categories
elif step.startswith("pretrain"):
    from pathlib import Path
    from trainer.pretrain import PretrainConfig, pretrain
    data = path + ("/super" if step == "pretrain_memory" else "/super_seq")
    cfg = PretrainConfig(super_path=Path(data), out=Path(path) / step, passes=1, progress=False)
    full = step == "pretrain_full"
    result = pretrain(cfg, stop_after_batches=None if full else int(sys.argv[4]))
    rows = result.rows if full else None
    if step == "pretrain_stream":  # the rest of the data path: every day read and encoded
        from trainer.data.stream import SequencedSource
        from trainer.distributed import DataParallel
        from contract.ids import Vocabs
        from trainer.models.checkpoint import VOCABS
        source = SequencedSource(Path(data))
        days = source.days()[:-1]
        stream = source.batches(days, Vocabs.load(cfg.out / VOCABS), seed=0, batch_size=cfg.batch_size,
                                passes=1, max_len=cfg.max_len, group=DataParallel(),
                                rows_in_memory=cfg.rows_in_memory)
        rows = sum(len(b) for _, b in stream.iter_from(0))
else:
    from contract.log import read_log
    df = read_log(path + "/super")
    rows = len(df)
    if step == "sequences":
        from contract.ids import Vocabs
        from trainer.data.dataset import EncodedLog
        EncodedLog.encode(df, Vocabs.build(df))
seconds = time.perf_counter() - t0
peak = own_peak_rss()
print(json.dumps({"rows": rows, "seconds": round(seconds, 2), "peak_rss_mib": round(peak / 2**20, 1)}))
"""

STEPS = (
    "synth",
    "check",
    "read",
    "sequences",
    "stage",
    "pretrain_memory",
    "pretrain_stream",
    "pretrain_full",
    "export",
)
#: Adam steps of the pre-training steps (their peak is the data path + the model, not training time).
PRETRAIN_STEPS = 20


def child_result(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (1 thread) with ``args``; its last stdout line, as JSON: a
    step measured alone (its peak RSS is its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"a bench step failed (exit {out.returncode}): {out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _step(step: str, path: Path, scale: str) -> dict[str, Any]:
    return child_result(_CHILD, step, str(path), scale, str(PRETRAIN_STEPS))


#: The steps that hold one day (one fragment) at a time: the only ones run on ``large``.
STREAMING_STEPS = ("synth", "check", "stage", "pretrain_stream")


def run(args: argparse.Namespace) -> dict[str, Any]:
    large_run = bool(getattr(args, "large", False))
    scales = ("medium", "large") if large_run else ("tiny", "small") if args.quick else ("small", "medium")
    result: dict[str, Any] = {"scales": list(scales), "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="keep-bench-scale-") as tmp:
        for scale in scales:
            world = Path(tmp) / scale
            steps = STREAMING_STEPS if scale == "large" else STEPS
            result[scale] = {step: _step(step, world, scale) for step in steps}
            result.setdefault("load_avg_1m_after", {})[scale] = round(os.getloadavg()[0], 2)
    for scale in scales:
        exported = result[scale].get("export")
        if exported:
            exported["entries_per_s"] = round(exported["rows"] / max(exported["seconds"], 1e-9), 1)
    small, large = (result[s] for s in scales)
    result["rss_ratio"] = {
        step: round(large[step]["peak_rss_mib"] / max(small[step]["peak_rss_mib"], 1e-9), 2)
        for step in STEPS
        if step in large
    }
    result["row_ratio"] = round(large["check"]["rows"] / max(small["check"]["rows"], 1), 2)
    result["stream_vs_memory_rss"] = {
        s: round(
            result[s]["pretrain_stream"]["peak_rss_mib"] / result[s]["pretrain_memory"]["peak_rss_mib"], 2
        )
        for s in scales
        if "pretrain_memory" in result[s]
    }
    if large_run:  # issue 12's targets for the large scale
        result["targets_met"] = {
            "stream_large_le_1.25x_medium": result["rss_ratio"]["pretrain_stream"] <= 1.25,
            "stream_large_lt_4gib": large["pretrain_stream"]["peak_rss_mib"] < 4096,
            "stage_large_lt_4gib": large["stage"]["peak_rss_mib"] < 4096,
            "synth_large_lt_4gib": large["synth"]["peak_rss_mib"] < 4096,
        }
        return result
    from bench.tables import run as bench_tables

    result["tables"] = bench_tables(bool(args.quick))
    return result
