"""``make load``: start GKC on 127.0.0.1, publish random versions, run Locust headless, check thresholds.

Steps: start ``python -m gkc`` on free loopback ports (embedded Redis unless ``--redis-url``), publish
``--versions`` random bundles, run ``locust --headless`` for ``--duration`` seconds with the users of
``loadtests/locustfile_gkc.py``, write the CSV + HTML report under ``--out`` (default
``results/load/``), print one JSON summary and exit 1 when any request failed or a p99 is above its
threshold in :data:`P99_THRESHOLDS_MS` (``--p99 NAME=MS`` overrides one); the last lines are the verdict,
one per check. Only loopback targets: this never load-tests another machine.

With ``--ranker`` it also starts ``python -m ranker`` serving a ``ranker.ranker_world.make_artifact`` model
pinned to the last published version (through that GKC), and runs the ``ranker.Rank`` user of
``loadtests/locustfile_ranker.py`` instead of the GKC users; the summary adds the degraded answers
counted by the ranker's ``keep_ranker_degraded_total``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gkc import bundle as gkc_bundle
from gkc.client import GkcOpsClient
from gkc.local_redis import free_port
from gkc.settings import gkc_env
from ranker.settings import ranker_env
from services import launch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: p99 limits (ms) per Locust request name at the default user count, on the 2-core dev machine with
#: Locust sharing it. Names not listed must still have zero errors.
P99_THRESHOLDS_MS: dict[str, float] = {
    "gkc.BatchGet": 10.0,
    "ranker.Rank": 50.0,
    "ops GET /v1/versions": 100.0,
    "ops GET /v1/versions/{v}": 100.0,
    "ops GET /healthz": 100.0,
    "ops GET /metrics": 200.0,
}
MAX_ERROR_RATE = 0.0


def random_bundle(path: Path, seed: int, users: int, items: int, categories: int, dim: int) -> Path:
    rng = np.random.default_rng(seed)
    per_user = min(categories, 5)
    uc_u = np.repeat([f"u{u}" for u in range(users)], per_user)
    uc_c = [f"c{c}" for _ in range(users) for c in rng.choice(categories, per_user, replace=False)]
    built = gkc_bundle.build(
        user_ids=[f"u{u}" for u in range(users)],
        user_vectors=rng.normal(size=(users, dim)).astype(np.float32),
        item_ids=[f"i{i}" for i in range(items)],
        item_vectors=rng.normal(size=(items, dim)).astype(np.float32),
        uc_user_ids=uc_u,
        uc_category_ids=uc_c,
        uc_vectors=rng.normal(size=(len(uc_u), dim // 2)).astype(np.float32),
        source={"loadtest": seed},
    )
    return gkc_bundle.save(built, path)


def wait_healthy(proc: Any, name: str, log_path: Path, http_url: str, *, timeout_s: float) -> None:
    """Poll ``/healthz`` until 200; exit with the service's log if it dies or stays unhealthy."""
    try:
        launch.wait_healthy(proc, name, f"{http_url}/healthz", log_path=log_path, timeout_s=timeout_s)
    except launch.ServiceStartError as err:
        raise SystemExit(str(err)) from err


def start_gkc(workdir: Path, redis_url: str | None, token: str, workers: int) -> tuple[Any, str, str]:
    grpc_port, http_port = free_port(), free_port()
    env = gkc_env(
        grpc_port,
        http_port,
        token,
        data_dir=workdir / "data",
        redis_url=redis_url,
        GKC_WORKERS=str(workers),
        GKC_LOG_LEVEL="WARNING",
    )
    log_path = workdir / "gkc.log"
    proc = launch.start([sys.executable, "-m", "gkc"], env, log_path=log_path, cwd=ROOT)
    http_url = f"http://127.0.0.1:{http_port}"
    wait_healthy(proc, "GKC", log_path, http_url, timeout_s=60)
    return proc, f"127.0.0.1:{grpc_port}", http_url


def start_ranker(
    workdir: Path, gkc_grpc: str, bundle_dir: Path, version: int, args: Any
) -> tuple[Any, str, str]:
    """A synthetic model (random weights, GKC plug-in pinned to ``version``) served by a real ranker."""
    from bench import ranker_world

    rows_per_user = max(1, min(10, 50_000 // max(1, args.id_users)))
    log = ranker_world.make_log(args.id_users, args.id_items, args.id_categories, rows_per_user, seed=0)
    ranker_world.make_artifact(workdir / "models" / "ctr", log, bundle_dir, version, seed=0)
    grpc_port, http_port = free_port(), free_port()
    env = ranker_env(
        grpc_port,
        http_port,
        gkc_grpc,
        workdir / "models",
        RANKER_LOG_LEVEL="WARNING",
        RANKER_DATA_DIR=str(workdir / "ranker"),
    )
    log_path = workdir / "ranker.log"
    proc = launch.start([sys.executable, "-m", "ranker"], env, log_path=log_path, cwd=ROOT)
    http_url = f"http://127.0.0.1:{http_port}"
    wait_healthy(proc, "ranker", log_path, http_url, timeout_s=120)
    return proc, f"127.0.0.1:{grpc_port}", http_url


def degraded_counts(metrics_text: str) -> dict[str, float]:
    """``keep_ranker_degraded_total`` by reason, from the ranker's Prometheus text."""
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("keep_ranker_degraded_total{"):
            labels, value = line.rsplit(" ", 1)
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(value)
    return out


def stop(proc: Any) -> None:
    launch.stop(proc, timeout_s=30)


def read_stats(csv_path: Path) -> list[dict[str, Any]]:
    rows = []
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                continue
            rows.append(
                {
                    "type": row["Type"],
                    "name": row["Name"],
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "median_ms": float(row["50%"] or 0),
                    "p99_ms": float(row["99%"] or 0),
                    "max_ms": float(row["Max Response Time"] or 0),
                    "rps": round(float(row["Requests/s"] or 0), 1),
                }
            )
    return rows


def verdict(
    rows: list[dict[str, Any]], thresholds: dict[str, float], max_error_rate: float = MAX_ERROR_RATE
) -> list[tuple[bool, str]]:
    """One ``(passed, line)`` per check: errors per request name, then p99 per threshold."""
    checks: list[tuple[bool, str]] = []
    if not rows or sum(r["requests"] for r in rows) == 0:
        checks.append((False, "no requests were made"))
    for r in rows:
        if r["requests"]:
            rate = r["failures"] / r["requests"]
            checks.append(
                (
                    rate <= max_error_rate,
                    f"{r['name']}: {r['failures']} errors in {r['requests']} requests "
                    f"(allowed rate {max_error_rate:g})",
                )
            )
        limit = thresholds.get(r["name"])
        if limit is not None:
            ok = r["p99_ms"] <= limit
            checks.append((ok, f"{r['name']}: p99 {r['p99_ms']:g} ms {'<=' if ok else '>'} {limit:g} ms"))
    return checks


def parse_thresholds(given: list[str]) -> dict[str, float]:
    """The defaults with ``NAME=MS`` overrides (``--p99 gkc.BatchGet=25``)."""
    out = dict(P99_THRESHOLDS_MS)
    for item in given:
        name, sep, value = item.rpartition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"run.py: error: --p99 takes NAME=MS (e.g. gkc.BatchGet=25), got {item!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=int, default=30, help="seconds of load (default 30)")
    p.add_argument("--users", type=int, default=11, help="Locust users: 10 gRPC readers per ops poller")
    p.add_argument("--spawn-rate", type=float, default=11.0)
    p.add_argument("--versions", type=int, default=3, help="random versions to publish and pin")
    p.add_argument("--id-users", type=int, default=5000)
    p.add_argument("--id-items", type=int, default=20000)
    p.add_argument("--id-categories", type=int, default=50)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="GKC gRPC worker processes")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of the embedded one")
    p.add_argument("--ranker", action="store_true", help="also start a ranker and load ranker.Rank")
    p.add_argument("--max-candidates", type=int, default=1000, help="top of the Rank candidate range")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "load")
    p.add_argument(
        "--p99",
        action="append",
        default=[],
        metavar="NAME=MS",
        help="p99 threshold for a request name, repeatable (defaults: "
        + ", ".join(f"{k}={v:g}" for k, v in P99_THRESHOLDS_MS.items())
        + ")",
    )
    p.add_argument(
        "--max-error-rate", type=float, default=MAX_ERROR_RATE, help="failed/requests allowed (default 0)"
    )
    args = p.parse_args(argv)
    thresholds = parse_thresholds(args.p99)
    args.out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="keep-load-") as tmp:
        work = Path(tmp)
        proc, grpc_addr, http_url = start_gkc(work, args.redis_url, token, args.workers)
        ranker_proc = None
        degraded: dict[str, float] = {}
        target = "ranker" if args.ranker else "gkc"
        try:
            ops = GkcOpsClient(http_url, token)
            versions = []
            for seed in range(args.versions):
                path = random_bundle(
                    work / f"bundle{seed}", seed, args.id_users, args.id_items, args.id_categories, args.dim
                )
                versions.append(int(ops.publish(path, progress=False)["version"]))
            locustfile = HERE / "locustfile_gkc.py"
            locust_ranker_env: dict[str, str] = {}
            if args.ranker:
                ranker_proc, ranker_grpc, ranker_http = start_ranker(
                    work, grpc_addr, work / f"bundle{args.versions - 1}", versions[-1], args
                )
                locustfile = HERE / "locustfile_ranker.py"
                locust_ranker_env = {
                    "KEEP_LOAD_RANKER_GRPC": ranker_grpc,
                    "KEEP_LOAD_MAX_CANDIDATES": str(args.max_candidates),
                }
            print(f"published versions {versions}; {args.duration} s of load", file=sys.stderr)
            env = {
                **os.environ,
                "KEEP_LOAD_GKC_GRPC": grpc_addr,
                "KEEP_LOAD_VERSIONS": ",".join(map(str, versions)),
                "KEEP_LOAD_USERS": str(args.id_users),
                "KEEP_LOAD_ITEMS": str(args.id_items),
                "KEEP_LOAD_CATEGORIES": str(args.id_categories),
                **locust_ranker_env,
            }
            prefix = args.out / target
            cmd = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile),
                "--headless",
                "--only-summary",
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                f"{args.duration}s",
                "--host",
                http_url,
                "--csv",
                str(prefix),
                "--html",
                str(args.out / f"{target}.html"),
                "--exit-code-on-error",
                "0",
            ]
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=args.duration + 120)
            if args.ranker:
                degraded = degraded_counts(httpx.get(f"{ranker_http}/metrics", timeout=10).text)
            after = [v["version"] for v in ops.versions()]
            ops.close()
        finally:
            if ranker_proc is not None:
                stop(ranker_proc)
            stop(proc)
    rows = read_stats(Path(f"{prefix}_stats.csv"))
    checks = verdict(rows, thresholds, args.max_error_rate)
    lost = sorted(set(versions) - set(after))
    checks.append((not lost, f"versions lost during the run: {lost or 'none'}"))
    problems = [line for ok, line in checks if not ok]
    summary = {
        "target": target,
        "duration_s": args.duration,
        "users": args.users,
        "gkc_workers": args.workers,
        "versions_published": versions,
        "versions_lost": len(lost),
        "requests": sum(r["requests"] for r in rows),
        "errors": sum(r["failures"] for r in rows),
        **({"degraded_by_reason": degraded} if args.ranker else {}),
        "by_name": rows,
        "thresholds_p99_ms": thresholds,
        "problems": problems,
        "report": str(args.out / f"{target}.html"),
    }
    (args.out / ("summary.json" if target == "gkc" else f"{target}-summary.json")).write_text(
        json.dumps(summary, indent=2)
    )
    print(json.dumps(summary))
    for ok, line in checks:  # the verdict, one line per check, last so that it is what one reads
        print(f"{'PASS' if ok else 'FAIL'} {line}")
    print(f"load {target}: {'FAIL, ' + str(len(problems)) + ' problem(s)' if problems else 'PASS'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
