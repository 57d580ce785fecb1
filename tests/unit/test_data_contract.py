"""The impression-log contract (README): readers, validation errors, vocabularies, leakage-free
behaviour sequences and the day ordering."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.ids import OOV, PAD, RESERVED, Vocab, Vocabs
from contract.log import DataError, read_log, write_log
from contract.schema import day_of
from trainer.cli import main
from trainer.data.dataset import EncodedLog
from trainer.data.ordering import day_order, day_slices
from trainer.data.sequences import HistoryIndex

DAY = 86_400


def small_log(rows: int = 200, seed: int = 0, str_ids: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 20, rows),
            "item_id": rng.integers(100, 160, rows),
            "category_id": rng.integers(0, 5, rows),
            "ts": 1_700_000_000 + rng.integers(0, 3 * DAY, rows),
            "click": (rng.random(rows) < 0.3).astype(np.int64),
            "conversion": np.zeros(rows, dtype=np.int64),
            "shop_id": rng.integers(0, 7, rows),
            "extra": "ignored",
        }
    )
    if str_ids:
        df["user_id"] = "u" + df["user_id"].astype(str)
    return df


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("str_ids", [False, True])
def test_round_trip(tmp_path: Path, suffix: str, str_ids: bool) -> None:
    df = small_log(str_ids=str_ids)
    path = write_log(df, tmp_path / f"log{suffix}")
    back = read_log(path)
    assert list(back.columns) == ["user_id", "item_id", "category_id", "ts", "click", "conversion", "shop_id"]
    assert back["ts"].dtype == np.int64
    assert back["click"].dtype == np.int8
    assert back["user_id"].tolist() == df["user_id"].tolist()
    assert back["click"].tolist() == df["click"].tolist()


def test_same_frame_same_bytes(tmp_path: Path) -> None:
    df = small_log()
    a = write_log(df, tmp_path / "a.parquet").read_bytes()
    b = write_log(df, tmp_path / "b.parquet").read_bytes()
    assert a == b


def _write_csv(tmp_path: Path, df: pd.DataFrame, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("mutate", "column", "words"),
    [
        (lambda d: d.drop(columns=["category_id"]), "category_id", "missing"),
        (lambda d: d.drop(columns=["click"]), "click", "missing"),
        (lambda d: d.assign(ts=d["ts"].astype(str) + "s"), "ts", "int64"),
        (lambda d: d.assign(ts=d["ts"] + 0.5), "ts", "int64"),
        (lambda d: d.assign(click=d["click"] * 2), "click", "0/1"),
        (lambda d: d.assign(conversion=-1), "conversion", "0/1"),
        (lambda d: d.assign(item_id=d["item_id"] + 0.25), "item_id", "non-integer"),
        (lambda d: d.assign(ts=-d["ts"]), "ts", "negative"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_bad_file_names_file_and_column(tmp_path: Path, mutate, column: str, words: str, suffix: str) -> None:
    df = mutate(small_log())
    path = tmp_path / f"bad{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    with pytest.raises(DataError) as info:
        read_log(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{column}'" in message
    assert words in message
    assert "\n" not in message


def test_missing_label_values(tmp_path: Path) -> None:
    df = small_log().astype({"click": "float64"})
    df.loc[3, "click"] = np.nan
    path = _write_csv(tmp_path, df)
    with pytest.raises(DataError, match="'click' has 1 missing"):
        read_log(path)


def test_empty_files(tmp_path: Path) -> None:
    zero = tmp_path / "zero.csv"
    zero.write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.csv.*empty"):
        read_log(zero)
    header_only = _write_csv(tmp_path, small_log().iloc[:0], "header.csv")
    with pytest.raises(DataError, match=r"header\.csv.*empty"):
        read_log(header_only)
    empty_parquet = tmp_path / "empty.parquet"
    small_log().iloc[:0].to_parquet(empty_parquet, index=False)
    with pytest.raises(DataError, match=r"empty\.parquet.*empty"):
        read_log(empty_parquet)


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"garbage\.parquet.*cannot be read"):
        read_log(garbage)
    other = tmp_path / "log.json"
    other.write_text("{}")
    with pytest.raises(DataError, match="unknown format"):
        read_log(other)
    with pytest.raises(DataError, match="no such file"):
        read_log(tmp_path / "absent.parquet")


# --------------------------------------------------------------------------- CLI


def test_cli_check_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = small_log(rows=300)
    path = write_log(df, tmp_path / "log.parquet")
    assert main(["data", "check", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip())
    assert summary["rows"] == 300
    assert summary["users"] == df["user_id"].nunique()
    assert summary["items"] == df["item_id"].nunique()
    assert summary["days"] == len(np.unique(day_of(df["ts"])))
    assert summary["click_rate"] == pytest.approx(df["click"].mean(), abs=1e-6)
    assert summary["tasks"] == ["click", "conversion"]


@pytest.mark.parametrize(
    ("content", "column"),
    [
        ("user_id,item_id,ts,click\n1,2,3,0\n", "category_id"),
        ("user_id,item_id,category_id,ts,click\n1,2,3,abc,0\n", "ts"),
        ("user_id,item_id,category_id,ts,click\n1,2,3,4,7\n", "click"),
    ],
)
def test_cli_bad_file_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, column: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["data", "check", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("keep: error: ")
    assert str(path) in err and f"'{column}'" in err


def test_cli_empty_file_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    assert main(["data", "check", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("keep: error: ") and "empty" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- vocabularies


def test_vocab_int_ids_and_oov() -> None:
    vocab = Vocab.build(np.array([42, 7, 42, 13]))
    assert len(vocab) == 3 + RESERVED
    idx = vocab.lookup(np.array([7, 13, 42, 99]))
    assert idx[-1] == OOV
    assert sorted(idx[:3].tolist()) == [RESERVED, RESERVED + 1, RESERVED + 2]
    assert PAD not in idx


def test_vocab_int_and_str_spellings_are_the_same_id() -> None:
    ints = Vocab.build(np.array([42, 7]))
    strs = Vocab.build(np.array(["42", "7"]))
    assert ints.lookup(np.array(["42", "7", "8"])).tolist() == ints.lookup(np.array([42, 7, 8])).tolist()
    assert strs.lookup(np.array([42, 7, 8])).tolist() == strs.lookup(np.array(["42", "7", "8"])).tolist()
    assert strs.lookup(np.array([8]))[0] == OOV
    assert sorted(ints.strings().tolist()) == sorted(strs.strings().tolist()) == ["42", "7"]


def test_vocab_json_round_trip() -> None:
    for keys in (np.array([3, 1, 2]), np.array(["b", "a"])):
        vocab = Vocab.build(keys)
        back = Vocab.from_json(json.loads(json.dumps(vocab.to_json())))
        assert back.lookup(keys).tolist() == vocab.lookup(keys).tolist()


# --------------------------------------------------------------------------- behaviour sequences


def naive_history(hist: pd.DataFrame, rows: pd.DataFrame, field: str, max_len: int) -> np.ndarray:
    """Per row: its user's clicks with ts strictly before the row's ts, last ``max_len``, oldest first."""
    clicks = hist[hist["click"] == 1].reset_index().sort_values(["ts", "index"], kind="stable")
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for r, (user, ts) in enumerate(zip(rows["u"], rows["ts"], strict=True)):
        mine = clicks[(clicks["u"] == user) & (clicks["ts"] < ts)][field].to_numpy()[-max_len:]
        if len(mine):
            out[r, max_len - len(mine) :] = mine
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_history_matches_naive_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 1_500
    df = pd.DataFrame(
        {
            "u": rng.integers(2, 30, n),
            # 40 distinct seconds for 1,500 rows: many ties, also between a row and its own clicks.
            "ts": 1_000 + rng.integers(0, 40, n),
            "click": (rng.random(n) < 0.5).astype(np.int8),
            "tag": np.arange(1, n + 1),
        }
    )
    max_len = 20
    index = HistoryIndex.build(
        df["u"].to_numpy(),
        df["ts"].to_numpy(),
        df["click"].to_numpy(),
        {"tag": df["tag"].to_numpy()},
        max_len=max_len,
    )
    got = index.gather(np.arange(n), "tag")
    expected = naive_history(df, df, "tag", max_len)
    np.testing.assert_array_equal(got, expected)
    # No row ever sees itself or anything at or after its own second.
    tag_ts = dict(zip(df["tag"], df["ts"], strict=True))
    for r in rng.choice(n, 200, replace=False):
        seen = got[r][got[r] > 0]
        assert df["tag"][r] not in seen
        assert all(tag_ts[t] < df["ts"][r] for t in seen)
    counts = np.array([(expected[r] > 0).sum() for r in range(n)])
    np.testing.assert_array_equal(index.lengths(), counts)
    assert (index.click_counts() >= index.lengths()).all()
    assert index.click_counts().max() > max_len  # the cap was exercised


def test_test_rows_take_history_from_train_and_test() -> None:
    rng = np.random.default_rng(3)

    def log(n: int, day: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": rng.integers(0, 15, n),
                "item_id": rng.integers(0, 80, n),
                "category_id": rng.integers(0, 6, n),
                "ts": day * DAY + rng.integers(0, 30, n) * 600,
                "click": (rng.random(n) < 0.4).astype(np.int8),
            }
        )

    train, test = log(1_200, 0), log(400, 1)
    vocabs = Vocabs.build(train)
    both = pd.concat([train, test], ignore_index=True)
    enc = EncodedLog.encode(test, vocabs, history_from=both, max_len=20)
    got = enc.history.gather(np.arange(len(test)), "item")
    ref_hist = both.assign(u=vocabs.user.lookup(both["user_id"]), item=vocabs.item.lookup(both["item_id"]))
    ref_rows = test.assign(u=vocabs.user.lookup(test["user_id"]))
    np.testing.assert_array_equal(got, naive_history(ref_hist, ref_rows, "item", 20))
    # Without history_from, test rows see only the test day's own earlier clicks: strictly fewer.
    alone = EncodedLog.encode(test, vocabs, max_len=20).history.lengths()
    assert (alone <= enc.history.lengths()).all() and alone.sum() < enc.history.lengths().sum()


# --------------------------------------------------------------------------- ordering


def test_day_order_days_ascending_shuffled_within_and_seeded() -> None:
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, 4 * DAY, 2_000))[::-1].copy()  # descending input
    order = day_order(ts, seed=7)
    assert sorted(order.tolist()) == list(range(len(ts)))
    days = day_of(ts[order])
    assert (np.diff(days) >= 0).all()
    assert order.tolist() == day_order(ts, seed=7).tolist()
    assert order.tolist() != day_order(ts, seed=8).tolist()
    # Within a day the order is shuffled, not by time.
    first_day = order[days == days[0]]
    assert not (np.diff(ts[first_day]) >= 0).all() and not (np.diff(ts[first_day]) <= 0).all()
    slices = day_slices(ts[order])
    assert [d for d, _, _ in slices] == sorted(set(days.tolist()))
    assert slices[0][1] == 0 and slices[-1][2] == len(ts)
