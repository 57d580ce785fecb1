"""Training through a real GKC (gRPC + Redis) sees exactly the K̂ bytes a local bundle gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from contract import artifact as artifact_mod
from contract.log import write_log
from gkc import bundle as bundle_mod
from gkc.bundle_reader import BundleReader
from gkc.client import GkcClient, GkcOpsClient
from ranker.knowledge import knowledge_for_rows, manifest_schema
from trainer.cli import main
from trainer.data.synth import generate

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    w = generate("tiny", seed=5, progress=False)
    files = {name: write_log(getattr(w, name), root / f"{name}.parquet") for name in ("train", "test")}
    rng = np.random.default_rng(0)
    both = pd.concat([w.train, w.test])
    users = both["user_id"].unique()[7:]  # some users GKC does not know
    items = both["item_id"].unique()[7:]
    pairs = both[["user_id", "category_id"]].drop_duplicates().iloc[7:]
    built = bundle_mod.build(
        user_ids=users,
        user_vectors=rng.normal(size=(len(users), 8)),
        item_ids=items,
        item_vectors=rng.normal(size=(len(items), 8)),
        uc_user_ids=pairs["user_id"].to_numpy(),
        uc_category_ids=pairs["category_id"].to_numpy(),
        uc_vectors=rng.normal(size=(len(pairs), 4)),
    )
    files["bundle"] = bundle_mod.save(built, root / "bundle")
    return files


@pytest.fixture(scope="module")
def published(gkc_service: Any, world: dict[str, Path]) -> int:
    ops = GkcOpsClient(gkc_service.http_url, gkc_service.token)
    return int(ops.publish(world["bundle"], progress=False)["version"])


def test_gkc_and_bundle_give_the_same_knowledge_bytes(
    gkc_service: Any, world: dict[str, Path], published: int
) -> None:
    df = pd.read_parquet(world["train"])
    reader = BundleReader.open(world["bundle"], version=published)
    schema = manifest_schema(reader.manifest)
    args = (schema, df["user_id"].to_numpy(), df["item_id"].to_numpy(), df["category_id"].to_numpy())
    local = knowledge_for_rows(reader, published, *args)
    with GkcClient(gkc_service.grpc_addr, timeout_s=5.0) as client:
        remote = knowledge_for_rows(client, published, *args)
    assert local.any(axis=1).mean() > 0.9  # most rows have knowledge
    assert (~local[:, :8].any(axis=1)).any()  # and some users are cold
    assert remote.tobytes() == local.tobytes()


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = main([*argv, "--no-progress", "--threads", "1", "--seed", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_train_through_gkc_equals_train_from_bundle(
    gkc_service: Any,
    world: dict[str, Path],
    published: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["train", "--train", str(world["train"]), "--knowledge-version", str(published)]
    via_gkc = _train([*base, "--out", str(tmp_path / "gkc"), "--gkc", gkc_service.grpc_addr], capsys)
    via_bundle = _train([*base, "--out", str(tmp_path / "bundle"), "--bundle", str(world["bundle"])], capsys)
    # the same knowledge: same schema, number and content; only GKC's answers name a publish
    gkc_pin, bundle_pin = via_gkc["knowledge"]["gkc"], via_bundle["knowledge"]["gkc"]
    assert len(gkc_pin.pop("publish_id")) == 16 and bundle_pin.pop("publish_id") == ""
    assert gkc_pin == bundle_pin
    assert gkc_pin["version"] == published
    a, b = artifact_mod.load(tmp_path / "gkc"), artifact_mod.load(tmp_path / "bundle")
    assert a.state.keys() == b.state.keys()
    for key in a.state:
        assert torch.equal(a.state[key], b.state[key]), key

    ev = [
        "evaluate",
        "--model",
        str(tmp_path / "gkc"),
        "--test",
        str(world["test"]),
        "--train",
        str(world["train"]),
    ]
    code = main([*ev, "--gkc", gkc_service.grpc_addr, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert set(json.loads(out)) == {"gauc", "auc", "rows", "users", "coverage"}


def test_unknown_version_is_refused(
    gkc_service: Any, world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "train",
        "--train",
        str(world["train"]),
        "--out",
        str(tmp_path / "m"),
        "--gkc",
        gkc_service.grpc_addr,
    ]
    code = main([*argv, "--knowledge-version", "987", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "987" in err
    assert not (tmp_path / "m").exists()
