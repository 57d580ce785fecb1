"""Offline pins and coverage (issue 11, cases 10 and 11): ``keep train`` / ``keep evaluate`` read exactly
the knowledge identity a model was trained with, from GKC and from a bundle alike, and refuse knowledge
that covers too few rows.

Two bundles A and B over the tiny world's ids, same dims, other values; a real GKC on free ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contract.log import write_log
from gkc import bundle as bundle_mod
from gkc.client import GkcOpsClient
from gkc.leases import wait_pinned
from services.errors import KeepError
from trainer.cli import main
from trainer.data.synth import generate

pytestmark = [pytest.mark.reliability, pytest.mark.redis]


def _bundle(path: Path, df: pd.DataFrame, seed: int, id_prefix: str = "") -> Path:
    """Random knowledge for (nearly) every id of ``df``; ``id_prefix`` spells the ids otherwise."""
    rng = np.random.default_rng(seed)
    users = df["user_id"].unique()[3:]
    items = df["item_id"].unique()[3:]
    pairs = df[["user_id", "category_id"]].drop_duplicates().iloc[3:]

    def ids(values: Any) -> list[str]:
        return [f"{id_prefix}{v}" for v in values]

    built = bundle_mod.build(
        user_ids=ids(users),
        user_vectors=rng.normal(size=(len(users), 8)),
        item_ids=ids(items),
        item_vectors=rng.normal(size=(len(items), 8)),
        uc_user_ids=ids(pairs["user_id"]),
        uc_category_ids=[str(c) for c in pairs["category_id"]],
        uc_vectors=rng.normal(size=(len(pairs), 4)),
        source={"test": seed},
    )
    return bundle_mod.save(built, path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pins-world")
    w = generate("tiny", seed=5, progress=False)
    files = {name: write_log(getattr(w, name), root / f"{name}.parquet") for name in ("train", "test")}
    both = pd.concat([w.train, w.test])
    files["a"] = _bundle(root / "a", both, seed=1)
    files["b"] = _bundle(root / "b", both, seed=2)
    files["prefixed"] = _bundle(root / "prefixed", both, seed=1, id_prefix="u")
    return files


def keep(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """``keep ARGV`` in process: (exit code, parsed JSON output or None, stderr)."""
    code = main([*argv, "--no-progress", "--threads", "1"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_a_model_reads_only_the_knowledge_it_was_trained_with(
    start_gkc: Any, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 10. Version 0 (active) is resolved once and recorded with the publish id and content
    checksum; a bundle-trained model pins the bundle's content. After another version is activated, and
    with another bundle, ``keep evaluate`` refuses with one line (exit 2) instead of scoring.

    Before: ``--bundle A --knowledge-version 0`` pinned "whatever is active": after B was activated
    ``keep evaluate --gkc`` silently scored with B (GAUC moved), ``keep evaluate --bundle B`` silently
    used B, and ``--bundle A --knowledge-version N`` accepted whatever GKC numbered N."""
    svc = start_gkc()
    ops = GkcOpsClient(svc.http_url, svc.token)
    va = int(ops.publish(world["a"], progress=False)["version"])
    identity_a = ops.version(va)["identity"]
    checksum_a = bundle_mod.read_manifest(world["a"]).content_checksum()
    assert identity_a["checksum"] == checksum_a

    def train(name: str, *knowledge: str) -> dict[str, Any]:
        argv = ["train", "--train", str(world["train"]), "--out", str(tmp_path / name), "--seed", "1"]
        code, out, err = keep([*argv, *knowledge], capsys)
        assert code == 0, err
        return dict(out["knowledge"]["gkc"])

    def evaluate(name: str, *knowledge: str) -> tuple[int, Any, str]:
        argv = ["evaluate", "--model", str(tmp_path / name), "--test", str(world["test"])]
        return keep([*argv, "--train", str(world["train"]), *knowledge], capsys)

    pins = {
        "bundle0": train("bundle0", "--bundle", str(world["a"]), "--knowledge-version", "0"),
        "gkc0": train("gkc0", "--gkc", svc.grpc_addr, "--knowledge-version", "0"),
    }
    code, before, err = evaluate("bundle0", "--gkc", svc.grpc_addr)
    assert code == 0, err

    vb = int(ops.publish(world["b"], progress=False)["version"])
    ops.activate(vb)
    pins["bundle_vb"] = train("bundle_vb", "--bundle", str(world["a"]), "--knowledge-version", str(vb))

    refusals = {
        "bundle-trained, GKC active is now B": evaluate("bundle0", "--gkc", svc.grpc_addr),
        "bundle-trained, bundle B": evaluate("bundle0", "--bundle", str(world["b"])),
        "GKC-trained on A, bundle B": evaluate("gkc0", "--bundle", str(world["b"])),
        "bundle A as number vb, GKC's vb is B": evaluate("bundle_vb", "--gkc", svc.grpc_addr),
    }
    for what, (code, _, err) in refusals.items():
        assert code == 2, (what, err)
        assert err.startswith("keep: error: ") and err.count("\n") == 1, (what, err)
        assert "content" in err or "version" in err, (what, err)
    accepted = {
        "bundle-trained, bundle A": evaluate("bundle0", "--bundle", str(world["a"])),
        "GKC-trained, GKC (reads its pinned vA)": evaluate("gkc0", "--gkc", svc.grpc_addr),
        "GKC-trained, bundle A": evaluate("gkc0", "--bundle", str(world["a"])),
    }
    for what, (code, _, err) in accepted.items():
        assert code == 0, (what, err)
    assert accepted["bundle-trained, bundle A"][1]["gauc"] == before["gauc"]
    recorded = {k: (p["version"], p.get("publish_id"), p.get("checksum")) for k, p in pins.items()}
    assert recorded == {
        "bundle0": (0, "", checksum_a),  # a bundle: its content, no publish
        "gkc0": (va, identity_a["publish_id"], checksum_a),  # version 0 resolved once, at the start
        "bundle_vb": (vb, "", checksum_a),
    }
    print(
        f"\nRELIABILITY offline_pins refused={len(refusals)}/{len(refusals)} "
        f"accepted={len(accepted)}/{len(accepted)} gauc_before={before['gauc']:.4f} "
        f"gauc_after_activation_same_bundle={accepted['bundle-trained, bundle A'][1]['gauc']:.4f}"
    )


def test_knowledge_that_covers_too_few_rows_is_refused(
    world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case 11. Training with ids the knowledge does not hold (``u123`` in the bundle, ``123`` in the log)
    is refused with one line naming the shares; ``--min-coverage 0`` trains and reports them; a test log
    whose users are unknown is refused by ``keep evaluate``; good knowledge reports its coverage.

    Before: the run exited 0 without a word and the plug-in learned from zeros."""
    base = ["train", "--train", str(world["train"]), "--seed", "1"]
    code, _, err = keep([*base, "--out", str(tmp_path / "x"), "--bundle", str(world["prefixed"])], capsys)
    assert code == 2, err
    assert "too few rows" in err and "user 0.0%" in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()

    code, out, err = keep(
        [*base, "--out", str(tmp_path / "x"), "--bundle", str(world["prefixed"]), "--min-coverage", "0"],
        capsys,
    )
    assert code == 0, err
    assert out["coverage"]["gkc"]["user"] == 0.0 and out["coverage"]["gkc"]["item"] == 0.0

    code, good, err = keep([*base, "--out", str(tmp_path / "m"), "--bundle", str(world["a"])], capsys)
    assert code == 0, err
    shares = good["coverage"]["gkc"]
    assert all(0.5 < shares[k] <= 1.0 for k in ("user", "item", "user_category")), shares

    test = pd.read_parquet(world["test"])
    test["user_id"] = test["user_id"] + 10_000_000  # users the knowledge has never seen
    strangers = write_log(test, tmp_path / "strangers.parquet")
    argv = ["evaluate", "--model", str(tmp_path / "m"), "--test", str(strangers), "--bundle", str(world["a"])]
    code, _, err = keep(argv, capsys)
    assert code == 2 and "too few rows" in err and "user 0.0%" in err, err
    code, result, err = keep([*argv, "--min-coverage", "0"], capsys)
    assert code == 0, err
    assert result["coverage"]["gkc"]["user"] == 0.0
    code, result, err = keep(
        [
            "evaluate",
            "--model",
            str(tmp_path / "m"),
            "--test",
            str(world["test"]),
            "--bundle",
            str(world["a"]),
        ],
        capsys,
    )
    assert code == 0, err
    print(
        f"\nRELIABILITY coverage prefixed_ids=refused train_shares={shares} "
        f"evaluate_shares={result['coverage']['gkc']}"
    )


def test_a_running_train_holds_a_lease_on_the_version_it_reads(
    start_gkc: Any, latency_proxy: Any, world: dict[str, Path], tmp_path: Path
) -> None:
    """Deliver 4 (offline half). ``keep train --gkc ... --gkc-api URL`` holds a lease on the version it
    reads while it runs (GKC's reads slowed by a proxy so the run lasts): the lease is listed with the
    command as holder, a publish that could only proceed by retiring that version is refused with 409,
    and when the run ends the lease is gone and the version retires normally.

    Before: no command line flag existed; a training run read a version GKC was free to retire."""
    svc = start_gkc(GKC_MAX_READY_VERSIONS="2")
    ops = GkcOpsClient(svc.http_url, svc.token)
    va = int(ops.publish(world["a"], progress=False)["version"])  # active
    vb = int(ops.publish(world["b"], progress=False)["version"])  # the one the run reads
    host, port = svc.grpc_addr.rsplit(":", 1)
    slow = latency_proxy((host, int(port)), 0.005)
    argv = [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--train",
        str(world["train"]),
        "--out",
        str(tmp_path / "m"),
        "--gkc",
        slow.addr,
        "--gkc-api",
        svc.http_url,
        "--knowledge-version",
        str(vb),
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "GKC_API_TOKEN": svc.token}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    holder = f"keep-train@{socket.gethostname()}:{proc.pid}"
    try:
        assert wait_pinned(ops, vb, holder, timeout_s=60), (ops.version(vb), proc.poll())
        with pytest.raises(KeepError) as refused:  # the only retirable slot is the run's version
            ops.publish(world["prefixed"], progress=False)
        assert refused.value.http_status == 409 and holder in refused.value.message
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["knowledge"]["gkc"]["version"] == vb
    assert ops.version(vb)["pins"] == []  # released at the end, not left to expire
    published = ops.publish(world["prefixed"], progress=False)
    assert vb in published["retired"] and va in [v["version"] for v in ops.versions()]
    print(
        f"\nRELIABILITY train_lease holder={holder} publish_during_run=409 "
        f"retired_after={published['retired']}"
    )
