"""The offline K(u, i) function on a ``full`` extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from contract.log import write_log
from tests.support.stage1_data import DAY, tiny_log
from trainer.knowledge_fn import KnowledgeFn, knowledge_matrix
from trainer.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("kfn")
    df = tiny_log(users=30, items=40, categories=5, days=3, rows_per_day=600)
    path = write_log(df, root / "super.parquet")
    pretrain(
        PretrainConfig(super_path=path, out=root / "full", strategy="full", batch_size=300, progress=False)
    )
    return root / "full", df


def test_full_knowledge_layout_and_values(full: tuple[Path, pd.DataFrame]) -> None:
    ckpt, df = full
    kfn = KnowledgeFn.load(ckpt)
    assert kfn.strategy == "full"
    assert kfn.blocks == {"ku": 48, "ki": 48, "kui:click": 64, "kui:conversion": 64, "kui:cart": 64}
    rows = df.iloc[:20].assign(ts=lambda d: d["ts"] + 30 * DAY)
    rows.loc[0, "user_id"] = 123_456_789  # unknown user → the OOV row
    log = kfn.encode(rows, df)
    blocks = ("ku", "ki", "kui:click", "kui:cart")
    k = kfn.matrix(log, blocks, batch_size=7)
    assert k.shape == (20, kfn.dim(blocks)) == (20, 224)
    emb = kfn.model.embeddings
    users = torch.from_numpy(log.user)
    np.testing.assert_allclose(k[:, :48], emb.lookup("user", users).detach().numpy(), rtol=1e-6)
    assert log.user[0] == 1
    # The same blocks straight from the model (one batch) agree with the batched matrix.
    direct = kfn.tensor(log, np.arange(20), ("kui:cart",)).numpy()
    np.testing.assert_allclose(k[:, 160:], direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(k[:, 96:160], k[:, 160:])


def test_histories_stop_at_the_window_unless_asked(full: tuple[Path, pd.DataFrame]) -> None:
    ckpt, df = full
    kfn = KnowledgeFn.load(ckpt)
    rows = df.iloc[-30:]  # the held-out day: after the window
    windowed = kfn.encode(rows, df)
    open_ended = kfn.encode(rows, df, upto_window=False)
    assert (open_ended.history.lengths() >= windowed.history.lengths()).all()
    assert (open_ended.history.lengths() > windowed.history.lengths()).any()


def test_one_call_helper_and_unknown_blocks(full: tuple[Path, pd.DataFrame]) -> None:
    ckpt, df = full
    k = knowledge_matrix(ckpt, df.iloc[:5], df)
    assert k.shape == (5, 48 + 48 + 3 * 64)
    with pytest.raises(KeyError, match="available"):
        KnowledgeFn.load(ckpt).dim(["kuc_hat"])
