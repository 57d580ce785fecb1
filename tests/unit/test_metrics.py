"""AUC/GAUC against sklearn's roc_auc_score, ties and one-class users included."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from trainer.cli import main
from trainer.metrics import auc, evaluate_scores, gauc, gauc_by_group, per_user_auc


def reference_gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    total, weight, n_users = 0.0, 0, 0
    for u in np.unique(users):
        m = users == u
        if 0 < labels[m].sum() < m.sum():
            total += m.sum() * roc_auc_score(labels[m], scores[m])
            weight += int(m.sum())
            n_users += 1
    return total / weight, n_users


def random_log(seed: int, rows: int = 4_000, users: int = 300, levels: int = 4):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, rows)
    y = (rng.random(rows) < 0.2).astype(np.int8)
    # Few distinct score values: most comparisons are ties.
    s = rng.integers(0, levels, rows) + 0.5 * y * rng.integers(0, 2, rows)
    return u, y, s.astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    _, y, s = random_log(seed)
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_per_user_sklearn_loop(seed: int) -> None:
    u, y, s = random_log(seed)
    # Some users with a single row or a single class must be left out, not counted as NaN or 0.5.
    u = np.concatenate([u, [10_001, 10_002, 10_002, 10_003, 10_003]])
    y = np.concatenate([y, [1, 0, 0, 1, 1]]).astype(np.int8)
    s = np.concatenate([s, [0.1, 0.2, 0.3, 0.4, 0.5]])
    expected, n_users = reference_gauc(u, y, s)
    assert gauc(u, y, s) == pytest.approx(expected, abs=1e-12)
    result = evaluate_scores(u, y, s)
    assert result.users == n_users
    assert result.users_all == len(np.unique(u))
    assert result.rows == len(u)
    assert result.gauc == pytest.approx(expected, abs=1e-12)


def test_string_user_ids_and_unsorted_input() -> None:
    u, y, s = random_log(5, rows=600, users=40)
    names = np.array([f"user-{x}" for x in u], dtype=object)
    perm = np.random.default_rng(0).permutation(len(u))
    assert gauc(names[perm], y[perm], s[perm]) == pytest.approx(gauc(u, y, s), abs=1e-12)


def test_one_class_everywhere_gives_nan() -> None:
    assert np.isnan(gauc([1, 1, 2], [0, 0, 0], [0.1, 0.2, 0.3]))
    assert np.isnan(auc([1, 1], [0.3, 0.2]))


def test_perfect_and_reversed_scores() -> None:
    u = np.array([1, 1, 1, 2, 2])
    y = np.array([0, 1, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.8, 0.7, 0.2])
    assert gauc(u, y, s) == pytest.approx(1.0)
    assert gauc(u, y, -s) == pytest.approx(0.0)


def test_gauc_by_group_matches_gauc_on_each_subset() -> None:
    u, y, s = random_log(7)
    group_of = {int(x): ("light" if x % 3 else "heavy") for x in np.unique(u)}
    by_group = gauc_by_group(u, y, s, group_of)
    assert set(by_group) == {"light", "heavy"}
    for name in by_group:
        m = np.array([group_of[int(x)] == name for x in u])
        assert by_group[name] == pytest.approx(gauc(u[m], y[m], s[m]), abs=1e-12)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="0/1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        gauc([1, 2], [0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, float("nan")])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.integers(0, 1), st.integers(0, 3)),
        min_size=1,
        max_size=80,
    )
)
def test_property_matches_sklearn(rows: list[tuple[int, int, int]]) -> None:
    u = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows], dtype=np.float64)
    per = per_user_auc(u, y, s)
    for user, value in zip(per.uniques, per.auc, strict=True):
        m = u == user
        if 0 < y[m].sum() < m.sum():
            assert value == pytest.approx(roc_auc_score(y[m], s[m]), abs=1e-12)
        else:
            assert np.isnan(value)
    if 0 < y.sum() < len(y):
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@given(st.lists(st.integers(-50, 50), min_size=4, max_size=40), st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_property_monotone_transform_keeps_auc(scores: list[int], seed: int) -> None:
    s = np.array(scores, dtype=np.float64) / 10.0
    y = np.random.default_rng(seed).integers(0, 2, len(s))
    if 0 < y.sum() < len(y):
        assert auc(y, np.exp(s)) == pytest.approx(auc(y, s), abs=1e-12)
        assert auc(y, -s) == pytest.approx(1.0 - auc(y, s), abs=1e-12)


def test_bench_metrics_quick_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "metrics", "--quick"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["agree"] is True
    assert result["rows"] == 20_000
    for key in ("gauc_vectorised_s", "sklearn_loop_s_measured", "sklearn_loop_s_extrapolated", "speedup"):
        assert result[key] > 0
