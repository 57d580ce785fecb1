"""``keep data synth | taobao | taobao-behavior | days | check | sequences``: make, validate and sequence
impression logs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("data", help="generate, convert and check impression logs")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    synth = data_sub.add_parser("synth", help="generate a synthetic super/sub-domain world")
    synth.add_argument("--out", required=True, help="output folder (super/train/test.parquet, truth.json)")
    synth.add_argument(
        "--scale",
        default="small",
        choices=("tiny", "demo", "small", "medium", "large"),
        help="world size (large: ~52M super rows, always written as day partitions)",
    )
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    synth.add_argument(
        "--world",
        default="paper",
        choices=("paper", "easy"),
        help="parameter setting: paper (calibrated to the paper's lifts, default) or easy (a large, "
        "easily transferred super-domain signal); trainer/data/synth_model.py WORLDS",
    )
    synth.add_argument(
        "--partitioned",
        action="store_true",
        help="write super/ and train/ as datasets of day partitions (day=YYYY-MM-DD/), one day in memory",
    )
    synth.set_defaults(func=run_synth)

    taobao = data_sub.add_parser("taobao", help="convert the Taobao ad sample (Tianchi data set 56)")
    taobao.add_argument(
        "--src",
        default=None,
        help="folder with ad_impressions.csv (default: $KEEP_TAOBAO_DIR, else shared/data/taobao beside the "
        "repository)",
    )
    taobao.add_argument("--out", required=True, help="output folder (super/train/test.parquet, truth.json)")
    taobao.add_argument("--fold", type=int, default=0, help="user fold on the test day (default 0)")
    taobao.add_argument("--folds", type=int, default=5, help="user folds (default 5; fold+1 validates)")
    taobao.set_defaults(func=run_taobao)

    days = data_sub.add_parser(
        "days",
        help="keep the rows of some days (e.g. yesterday's log for --init continuations)",
        description="Write the rows of LOG on the chosen days (a day is ts // 86400) to --out: "
        "--last N keeps the last N days the log holds, --drop-last N all but those; --from/--to "
        "bound the day numbers.",
    )
    days.add_argument("--last", type=int, default=None, help="keep only the log's last N days")
    days.add_argument("--drop-last", type=int, default=None, help="drop the log's last N days")
    days.add_argument("log", help="a .parquet or .csv impression log")
    days.add_argument(
        "--from", dest="first", type=int, default=None, help="first day kept (default: the log's)"
    )
    days.add_argument("--to", type=int, default=None, help="last day number kept")
    days.add_argument("--out", required=True, help="output file (.parquet or .csv)")
    days.set_defaults(func=run_days)

    behavior = data_sub.add_parser(
        "taobao-behavior", help="convert the Taobao UserBehavior sample (Tianchi data set 649)"
    )
    behavior.add_argument(
        "--src",
        default=None,
        help="folder with user_behavior.csv.gz (default: $KEEP_TAOBAO_BEHAVIOR_DIR, else "
        "../shared/data/taobao-userbehavior)",
    )
    behavior.add_argument("--out", required=True, help="output folder (super/train/test.parquet, truth.json)")
    behavior.add_argument("--train-days", type=int, default=2, help="training days (the last validates)")
    behavior.add_argument("--test-days", type=int, default=1, help="test days at the end (default 1)")
    behavior.set_defaults(func=run_taobao_behavior)

    check = data_sub.add_parser("check", help="validate a log and print a one-line JSON summary")
    check.add_argument("file", help="an impression log: a .parquet/.csv file or a dataset directory")
    check.set_defaults(func=run_check)

    seqs = data_sub.add_parser(
        "sequences",
        help="build behaviour sequences as list columns into day partitions (out of core)",
        description="Write LOG's rows with each row's user's last --max-len clicks strictly before its ts "
        "(hist_item_id, hist_category_id) as day partitions of --out, one day in memory plus each "
        "user's last clicks. An --out sequenced before is continued: only LOG's days after its last day "
        "are sequenced, from its saved state (_state.parquet).",
    )
    seqs.add_argument("log", help="an impression log: a .parquet/.csv file or a dataset directory")
    seqs.add_argument(
        "--out", required=True, help="the sequenced dataset directory (new, or one to continue)"
    )
    seqs.add_argument("--max-len", type=int, default=None, help="clicks per sequence (default 50)")
    seqs.add_argument(
        "--engine",
        choices=("arrow", "spark"),
        default="arrow",
        help="arrow (default): in process, out of core; spark: Spark SQL for logs beyond one machine "
        "(needs pyspark and a JDK; a new --out only, continue it with arrow)",
    )
    seqs.add_argument(
        "--spark-master", default="local[*]", help="with --engine spark: the cluster (default local[*])"
    )
    seqs.set_defaults(func=run_sequences)


def _print_written(paths: dict[str, Path], truth: dict[str, Any]) -> None:
    summary = {
        "out": str(paths["truth"].parent),
        "files": {k: str(v) for k, v in sorted(paths.items())},
        "rows": {k: truth["sizes"][k]["rows"] for k in ("super", "train", "test")},
    }
    print(json.dumps(summary, sort_keys=True))


def run_synth(args: argparse.Namespace) -> int:
    from trainer.data.synth import PARTITIONED_ONLY, generate, write_world, write_world_partitioned

    if args.partitioned or args.scale in PARTITIONED_ONLY:
        paths, truth = write_world_partitioned(args.scale, args.out, args.seed, world=args.world)
        _print_written(paths, truth)
        return 0
    world = generate(args.scale, args.seed, world=args.world)
    _print_written(write_world(world, args.out), world.truth)
    return 0


def default_taobao_dir(env_var: str = "KEEP_TAOBAO_DIR", name: str = "taobao") -> Path:
    """``$KEEP_TAOBAO_DIR``, else the ``shared/data/taobao`` folder next to the repository."""
    env = os.environ.get(env_var)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "data" / name


def default_taobao_behavior_dir() -> Path:
    return default_taobao_dir("KEEP_TAOBAO_BEHAVIOR_DIR", "taobao-userbehavior")


def run_taobao_behavior(args: argparse.Namespace) -> int:
    from trainer.data.taobao_behavior import convert

    src = Path(args.src) if args.src else default_taobao_behavior_dir()
    paths, truth = convert(src, args.out, train_days=args.train_days, test_days=args.test_days)
    _print_written(paths, truth)
    return 0


def run_taobao(args: argparse.Namespace) -> int:
    from trainer.data.taobao import convert

    src = Path(args.src) if args.src else default_taobao_dir()
    paths, truth = convert(src, args.out, fold=args.fold, folds=args.folds)
    _print_written(paths, truth)
    return 0


def run_days(args: argparse.Namespace) -> int:
    from contract.log import read_log, write_log
    from contract.schema import day_of
    from services.errors import InvalidArgument

    df = read_log(args.log)
    days = day_of(df["ts"].to_numpy())
    present = sorted(set(days.tolist()))
    first = present[0] if args.first is None else args.first
    last = present[-1] if args.to is None else args.to
    for flag, n in (("--last", args.last), ("--drop-last", args.drop_last)):
        if n is not None and not 0 < n < len(present) + (flag == "--last"):
            raise InvalidArgument(f"{flag} {n}: the log holds {len(present)} days")
    if args.last is not None:
        first = max(first, present[-args.last])
    if args.drop_last is not None:
        last = min(last, present[-args.drop_last - 1])
    kept = df[(days >= first) & (days <= last)]
    if kept.empty:
        raise InvalidArgument(
            f"{args.log}: no rows in days {first}-{last} (the log holds days {present[0]}-{present[-1]})"
        )
    if Path(args.out).resolve() == Path(args.log).resolve():
        raise InvalidArgument(f"--out {args.out} is the input log; write to another file")
    write_log(kept.reset_index(drop=True), args.out)
    print(json.dumps({"out": str(args.out), "rows": len(kept), "first_day": first, "last_day": last}))
    return 0


def run_sequences(args: argparse.Namespace) -> int:
    from contract.schema import DEFAULT_MAX_LEN
    from trainer.data.sequence_stage import sequence_log

    max_len = args.max_len or DEFAULT_MAX_LEN
    if args.engine == "spark":
        from trainer.data.sequence_spark import sequence_log_spark

        result = sequence_log_spark(args.log, args.out, max_len=max_len, master=args.spark_master)
    else:
        result = sequence_log(args.log, args.out, max_len=max_len)
    print(json.dumps(result.to_json(), sort_keys=True))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from contract.log import summarise_log

    print(json.dumps({"file": str(args.file), **summarise_log(args.file)}, sort_keys=True))
    return 0
