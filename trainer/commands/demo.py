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
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from trainer.cli import CommandError


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on tiny synthetic data")
    parser.add_argument("--out", default=".keep/demo", help="working directory (default .keep/demo)")
    parser.add_argument("--scale", default="tiny", choices=["tiny", "small"], help="synthetic world size")
    parser.add_argument("--seed", type=int, default=7)
    parser.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self.grpc_port, self.http_port = _free_port(), _free_port()
        self.token = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "GKC_GRPC_PORT": str(self.grpc_port),
            "GKC_HTTP_PORT": str(self.http_port),
            "GKC_DATA_DIR": str(data_dir),
            "GKC_API_TOKEN": self.token,
        }
        env.pop("GKC_REDIS_URL", None)
        log = (data_dir.parent / "gkc.log").open("w")
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer", "serve", "gkc"], env=env, stdout=log, stderr=log
        )
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.addr = f"127.0.0.1:{self.grpc_port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CommandError(f"GKC exited with {self.proc.returncode}; see its log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.2)
        raise CommandError("GKC did not become healthy in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
