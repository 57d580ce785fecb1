"""``keep demo``: the whole pipeline on a tiny synthetic world, end to end, through a real GKC.

synth → pretrain (serving strategy) → export → start GKC (embedded Redis) → publish → train the base
model and the KEEP model through GKC → evaluate both → print a GAUC table. Every step is the public
CLI, called in process, so the demo is also a check that the CLI contract holds together.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from services import launch
from trainer.cli import CommandError


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on tiny synthetic data")
    parser.add_argument("--out", default=".keep/demo", help="working directory (default .keep/demo)")
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small"], help="synthetic world size")
    parser.add_argument("--seed", type=int, default=7)
    parser.set_defaults(func=run)


def _step(title: str) -> None:
    print(f"\n==> {title}", file=sys.stderr, flush=True)


def _keep(*argv: str) -> str:
    """Run one ``keep`` command in process; return its stdout; raise on a non-zero exit."""
    from trainer.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(list(argv))
    if code:
        raise CommandError(f"`keep {' '.join(argv)}` exited {code}")
    return buffer.getvalue()


class _Gkc:
    """A real GKC subprocess (gRPC + REST, embedded Redis under the demo dir) for the demo's lifetime."""

    def __init__(self, data_dir: Path) -> None:
        from gkc.local_redis import free_port

        self.grpc_port, self.http_port = free_port(), free_port()
        self.token = secrets.token_urlsafe(24)
        env = launch.gkc_env(self.grpc_port, self.http_port, self.token, data_dir=data_dir, host=None)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / "gkc.log"
        argv = [sys.executable, "-m", "trainer", "serve", "gkc"]
        self.proc = launch.start(argv, env, log_path=self.log_path)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.addr = f"127.0.0.1:{self.grpc_port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        try:
            launch.wait_healthy(
                self.proc, "GKC", f"{self.url}/healthz", log_path=self.log_path, timeout_s=timeout_s
            )
        except launch.ServiceStartError as err:
            raise CommandError(str(err)) from None

    def stop(self) -> None:
        launch.stop(self.proc)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, extractor, bundle = out / "data", out / "extractor", out / "bundle"
    started = time.perf_counter()

    _step(f"synthetic world ({args.scale}) → {data}")
    _keep("data", "synth", "--out", str(data), "--scale", args.scale, "--seed", str(args.seed))

    _step("stage 1: multi-task pre-training on the super-domain log (serving forms)")
    _keep(
        "pretrain",
        "--super",
        str(data / "super.parquet"),
        "--out",
        str(extractor),
        "--strategy",
        "serving",
        "--seed",
        str(args.seed),
    )

    _step("export the knowledge bundle")
    if bundle.exists():
        import shutil

        shutil.rmtree(bundle)
    _keep("export", "--extractor", str(extractor), "--out", str(bundle))

    _step("start GKC (embedded Redis) and publish the bundle")
    gkc = _Gkc(out / "gkc")
    try:
        gkc.wait_healthy()
        version = (
            _keep("publish", str(bundle), "--gkc", gkc.url, "--token", gkc.token).strip().splitlines()[-1]
        )

        results: dict[str, dict[str, Any]] = {}
        for name, extra in (("base", ["--no-knowledge"]), ("keep", [])):
            _step(f"stage 2: train the downstream model '{name}'" + (" through GKC" if not extra else ""))
            model = out / f"model-{name}"
            _keep(
                "train",
                "--train",
                str(data / "train.parquet"),
                "--gkc",
                gkc.addr,
                "--knowledge-version",
                version,
                "--out",
                str(model),
                "--seed",
                str(args.seed),
                *extra,
            )
            report = _keep(
                "evaluate",
                "--model",
                str(model),
                "--test",
                str(data / "test.parquet"),
                "--train",
                str(data / "train.parquet"),
                "--gkc",
                gkc.addr,
            )
            results[name] = json.loads(report.strip().splitlines()[-1])
    finally:
        gkc.stop()

    base = results["base"]["gauc"]
    print(
        f"\nKEEP demo ({args.scale} synthetic world, knowledge version {version}, "
        f"{time.perf_counter() - started:.0f} s)"
    )
    print(f"{'method':<8} {'GAUC':>8} {'AUC':>8} {'lift':>8} {'rows':>8} {'users':>7}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['gauc']:>8.4f} {r['auc']:>8.4f} {r['gauc'] - base:>+8.4f} "
            f"{r['rows']:>8} {r['users']:>7}"
        )
    return 0
