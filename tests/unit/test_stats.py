"""Paired statistics of ``keep experiment`` (trainer.stats) and their place in report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.report import render
from trainer.stats import lift_stats, mean_ci, paired_t, sign_test_p, t_quantile, t_two_sided_p


def test_sign_test_is_the_exact_binomial() -> None:
    assert sign_test_p([0.1, 0.2, 0.3]) == pytest.approx(0.25)  # 2 * (1/2)**3
    assert sign_test_p([0.1] * 5) == pytest.approx(0.0625)
    assert sign_test_p([0.1, -0.2, 0.3, 0.4]) == pytest.approx(2 * 5 / 16)
    assert sign_test_p([0.1, -0.1]) == 1.0
    assert sign_test_p([0.0, 0.0]) is None  # zero lifts carry no sign
    assert sign_test_p([0.0, 0.1, 0.2]) == pytest.approx(0.5)  # the zero is dropped: n = 2


def test_t_distribution_matches_closed_forms() -> None:
    # df = 1 is Cauchy: p = 1 − 2/π·atan|t|; df = 2: p = 1 − |t|/sqrt(t² + 2).
    for t in (0.3, 1.0, 2.5, 12.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-10)
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), abs=1e-10)
    # A textbook quantile: t = 2.776 is the two-sided 5% point for df = 4.
    assert t_two_sided_p(2.776, 4) == pytest.approx(0.05, abs=1e-3)


def test_t_quantiles_are_the_textbook_ones() -> None:
    # two-sided 5 % points: df 1 (Cauchy: tan(0.475 pi)), 2 (closed form 4.3027), 4 (2.7764), 30 (2.0423)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-9)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)


def test_the_interval_excludes_zero_exactly_when_the_t_test_rejects() -> None:
    lo, hi = mean_ci([1.0, 2.0, 3.0]) or (0.0, 0.0)
    assert (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), abs=1e-6)
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(2, 8))
        lifts = list(rng.normal(0.005, 0.01, size=n))
        ci, (_, p) = mean_ci(lifts), paired_t(lifts)
        assert ci is not None and p is not None
        if abs(p - 0.05) > 1e-6:
            assert (ci[0] > 0 or ci[1] < 0) == (p < 0.05)
    assert mean_ci([0.01]) is None


def test_paired_t_on_lifts() -> None:
    t, p = paired_t([0.01, 0.02, 0.03])
    assert t == pytest.approx(0.02 / (0.01 / math.sqrt(3)))
    assert t is not None and p is not None and p == pytest.approx(t_two_sided_p(t, 2))
    assert paired_t([0.01]) == (None, None)
    assert paired_t([0.0, 0.0, 0.0]) == (None, 1.0)


def test_lift_stats_pairs_by_seed_and_flags_sign_disagreement() -> None:
    runs = {
        "base": [0.60, 0.62, 0.58],
        "keep": [0.62, 0.63, 0.59],  # +0.02, +0.01, +0.01: seeds agree
        "noisy": [0.65, 0.60, 0.59],  # +0.05, −0.02, +0.01: they do not
    }
    stats = lift_stats(runs)
    assert set(stats) == {"keep", "noisy"}
    keep, noisy = stats["keep"], stats["noisy"]
    assert keep["lifts"] == pytest.approx([0.02, 0.01, 0.01])
    assert keep["mean"] == pytest.approx(0.04 / 3)
    assert keep["std"] == pytest.approx(math.sqrt(((0.02 - 0.04 / 3) ** 2 + 2 * (0.01 - 0.04 / 3) ** 2) / 2))
    assert not keep["sign_disagrees"] and keep["positive"] == 3 and keep["sign_test_p"] == pytest.approx(0.25)
    assert keep["t"] == pytest.approx(4.0)  # mean 0.0133, std 0.00577, n 3
    assert keep["t_test_p"] == pytest.approx(1 - 4 / math.sqrt(18))  # df 2 closed form: 0.057
    assert noisy["sign_disagrees"] and (noisy["positive"], noisy["negative"]) == (2, 1)
    assert noisy["t_test_p"] > 0.3
    # p 0.057 > 0.05: the interval just holds 0 (0.0133 ± 4.3027 · 0.00577 / √3)
    assert keep["ci95"] == pytest.approx([0.04 / 3 - 4.302653 * 0.01 / 3, 0.04 / 3 + 4.302653 * 0.01 / 3])
    assert noisy["ci95"][0] < -0.05 and noisy["ci95"][1] > 0.07
    # Pairing matters: the same values unpaired (sorted) would give other lifts.
    shuffled = lift_stats({"base": [0.58, 0.60, 0.62], "keep": [0.62, 0.63, 0.59]})["keep"]
    assert shuffled["sign_disagrees"]
    with pytest.raises(ValueError, match="seeds"):
        lift_stats({"base": [0.5, 0.6], "keep": [0.5]})
    assert lift_stats({"keep": [0.5]}) == {}  # no base run: nothing to pair with


def test_report_shows_the_lift_table_and_flags_disagreeing_seeds() -> None:
    runs = {"base": [0.60, 0.62, 0.58], "keep": [0.62, 0.63, 0.59], "noisy": [0.65, 0.60, 0.59]}
    methods = {
        name: {
            "gauc": {"mean": sum(v) / 3, "std": 0.01, "runs": v},
            "auc": {"mean": sum(v) / 3, "std": 0.01, "runs": v},
            "epochs": [1, 1, 1],
        }
        for name, v in runs.items()
    }
    result = {
        "dataset": {k: {"rows": 10, "users": 2} for k in ("super", "train", "test")},
        "methods": methods,
        "seeds": 3,
        "stats": {"reference": "base", "gauc": lift_stats(runs)},
    }
    report = render(result)
    assert "## Lift over base, paired by seed" in report
    keep_row = next(line for line in report.splitlines() if line.startswith("| keep | +0.0133"))
    assert "+0.0200, +0.0100, +0.0100" in keep_row and "disagree" not in keep_row
    assert "-0.0010 .. +0.0277" in keep_row  # 0.0133 ± 4.3027 · 0.00577 / √3
    noisy_row = next(line for line in report.splitlines() if line.startswith("| noisy | +0.0133"))
    assert "**seeds disagree in sign**" in noisy_row
    assert "disagree on the sign of the lift of noisy" in report


def test_demo_noise_floor_counts_gauc_users_and_shrinks_with_more_of_them(tmp_path: Path) -> None:
    from contract.log import write_log
    from trainer.commands.demo import chance_noise

    def log(users: int) -> Path:
        rng = np.random.default_rng(1)
        n = users * 20
        df = pd.DataFrame(
            {
                "user_id": np.repeat(np.arange(users), 20),
                "item_id": rng.integers(0, 50, n),
                "category_id": 1,
                "ts": 1_700_000_000,
                "click": (np.arange(n) % 5 == 0).astype(np.int8),
            }
        )
        df.loc[df["user_id"] == 0, "click"] = 0  # one user without a click: not a GAUC user
        return write_log(df, tmp_path / f"test{users}.parquet")

    few_users, few = chance_noise(log(20))
    many_users, many = chance_noise(log(320))
    assert (few_users, many_users) == (19, 319)
    # Each user's AUC of random scores has the same spread, so the mean's std falls like 1/sqrt(users).
    assert few / many == pytest.approx(math.sqrt(319 / 19), rel=0.3)
