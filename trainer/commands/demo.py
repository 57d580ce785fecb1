"""``keep demo``: the whole pipeline on a tiny synthetic world, end to end, through a real GKC.

synth → pretrain (serving strategy) → export → start GKC (embedded Redis) → publish → train the base
model and the KEEP model through GKC → evaluate both → print a GAUC table. Every step is a call of the
pipeline API (:mod:`trainer.pipeline`), the same functions the CLI commands call.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from gkc.settings import gkc_env
from services import launch
from services.errors import InvalidArgument

#: Downstream passes of the demo's two models: one pass over its ~12k training rows is ~50 Adam steps,
#: too few for the base model to learn the ads' own biases (measured: docs/experiments-synth.md).
DEMO_EPOCHS = 2
#: Pre-training passes over the demo's ~80k super-domain rows (one pass is ~40 Adam steps at batch
#: 2000). Fixed: early stopping's search would cost the demo's minute (docs/experiments-synth.md).
DEMO_PASSES = 3
#: The id tables' learning rate as a multiple of the dense one (``keep pretrain --sparse-lr-ratio``; the
#: default 20 leaves the demo's tables under-trained in 3 short passes). Chosen on the extractor's
#: held-out super-domain day, never the test day: the smallest ratio within 0.005 of the best mean
#: held-out click GAUC of the two serving forms over seeds 7-14 (docs/experiments-synth.md).
DEMO_SPARSE_LR_RATIO = 200.0


def register(sub: Any) -> None:
    parser = sub.add_parser("demo", help="run the whole pipeline on tiny synthetic data")
    parser.add_argument("--out", default=".keep/demo", help="working directory (default .keep/demo)")
    parser.add_argument(
        "--scale", default="demo", choices=["tiny", "demo", "small"], help="world size (default demo)"
    )
    parser.add_argument(
        "--world",
        default="easy",
        choices=["easy", "paper"],
        help="synthetic world setting (default easy: a lift far above the noise; paper: the paper's sizes)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the world and the models")
    parser.add_argument(
        "--epochs", type=int, default=DEMO_EPOCHS, help=f"downstream passes (default {DEMO_EPOCHS})"
    )
    parser.add_argument(
        "--passes", type=int, default=DEMO_PASSES, help=f"pre-training passes (default {DEMO_PASSES})"
    )
    parser.add_argument(
        "--sparse-lr-ratio",
        type=float,
        default=DEMO_SPARSE_LR_RATIO,
        help=f"the id tables' learning rate over the dense one (default {DEMO_SPARSE_LR_RATIO:g})",
    )
    parser.set_defaults(func=run)


def _step(title: str) -> None:
    print(f"\n==> {title}", file=sys.stderr, flush=True)


class _Gkc:
    """A real GKC subprocess (gRPC + REST, embedded Redis under the demo dir) for the demo's lifetime."""

    def __init__(self, data_dir: Path) -> None:
        from gkc.local_redis import free_port

        self.grpc_port, self.http_port = free_port(), free_port()
        self.token = secrets.token_urlsafe(24)
        env = gkc_env(self.grpc_port, self.http_port, self.token, data_dir=data_dir, host=None)
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
            raise InvalidArgument(str(err)) from None

    def stop(self) -> None:
        launch.stop(self.proc)


def run(args: argparse.Namespace) -> int:
    from trainer import pipeline
    from trainer.data.synth import generate, write_world

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, extractor, bundle = out / "data", out / "extractor", out / "bundle"
    started = time.perf_counter()

    _step(f"synthetic world ({args.scale}, {args.world}) → {data}")
    write_world(generate(args.scale, args.seed, world=args.world), data)

    _step("stage 1: multi-task pre-training on the super-domain log (serving forms)")
    pipeline.pretrain(
        pipeline.PretrainConfig(
            super_path=data / "super.parquet",
            out=extractor,
            strategy="serving",
            seed=args.seed,
            passes=args.passes,
            sparse_lr_ratio=args.sparse_lr_ratio,
        )
    )

    _step("export the knowledge bundle")
    if bundle.exists():
        import shutil

        shutil.rmtree(bundle)
    pipeline.export(pipeline.ExportConfig(extractor=extractor, out=bundle))

    _step("start GKC (embedded Redis) and publish the bundle")
    gkc = _Gkc(out / "gkc")
    try:
        gkc.wait_healthy()
        version = pipeline.publish(pipeline.PublishConfig(bundle, gkc.url, gkc.token)).version

        results: dict[str, dict[str, Any]] = {}
        source = pipeline.KnowledgeSource(gkc=gkc.addr)
        for name, with_knowledge in (("base", False), ("keep", True)):
            _step(
                f"stage 2: train the downstream model '{name}'" + (" through GKC" if with_knowledge else "")
            )
            model = out / f"model-{name}"
            pipeline.train(
                pipeline.TrainJob(
                    train=data / "train.parquet",
                    out=model,
                    knowledge=source if with_knowledge else None,
                    knowledge_version=version,
                    config=pipeline.TrainConfig(seed=args.seed, epochs=args.epochs),
                )
            )
            results[name] = pipeline.evaluate(
                pipeline.EvaluateJob(
                    model=model, test=data / "test.parquet", train=data / "train.parquet", knowledge=source
                )
            )
    finally:
        gkc.stop()

    base = results["base"]["gauc"]
    print(
        f"\nKEEP demo ({args.scale} synthetic world '{args.world}', knowledge version {version}, "
        f"{time.perf_counter() - started:.0f} s)"
    )
    print(f"{'method':<8} {'GAUC':>8} {'AUC':>8} {'lift':>8} {'rows':>8} {'users':>7}")
    for name, r in results.items():
        print(
            f"{name:<8} {r['gauc']:>8.4f} {r['auc']:>8.4f} {r['gauc'] - base:>+8.4f} "
            f"{r['rows']:>8} {r['users']:>7}"
        )
    users, noise = chance_noise(data / "test.parquet")
    print(
        f"\nNoise: {users} test users have both labels; on them a random scorer's GAUC is 0.5 ± {noise:.4f} "
        f"(std over 200 draws): a GAUC within ±{2 * noise:.4f} of 0.5 is no evidence of learning. The lift "
        "compares two models on the same users; its spread over seeds is measured by `keep experiment "
        "--seeds 3` (a std and a paired test; the demo's own: docs/experiments-synth.md)."
    )
    return 0


def chance_noise(test_path: Path, draws: int = 200) -> tuple[int, float]:
    """(users with both labels, std of a random scorer's GAUC on the test log): the demo's noise floor."""
    import numpy as np

    from contract.log import read_log
    from trainer.metrics import gauc

    df = read_log(test_path)
    users, labels = df["user_id"].astype(str).to_numpy(), df["click"].to_numpy()
    both = df.groupby("user_id")["click"].agg(["min", "max"])
    rng = np.random.default_rng(0)
    values = [gauc(users, labels, rng.random(len(df))) for _ in range(draws)]
    return int(((both["min"] == 0) & (both["max"] == 1)).sum()), float(np.std(values, ddof=1))
