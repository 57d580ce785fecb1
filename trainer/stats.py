"""Paired statistics of ``keep experiment``: each method against ``base``, seed by seed.

Seed ``s`` of every method shares its data, its downstream initialisation seed and (with
``--reuse-extractors``) its extractor, so a method's lift is measured per seed (``method_s − base_s``)
and tested as paired samples:

- **sign test** (exact, two-sided binomial on the signs; zero lifts dropped): needs no assumption on
  the lifts' distribution, but with 3 seeds its smallest p-value is 0.25, with 5 seeds 0.0625.
- **paired t-test** (two-sided, ``n − 1`` degrees of freedom): assumes roughly normal lifts; the only
  one of the two that can say anything with 3 seeds.
- **95% confidence interval** of the mean lift (``mean ± t₀.₉₇₅,ₙ₋₁ · std / √n``, the same assumption):
  what the seeds can claim about the size, e.g. whether a control (``keep_zero``) is within ±0.003 of
  base or only not shown to differ (an interval wider than the band says the latter). It excludes 0
  exactly when the t-test's p < 0.05.

``sign_disagrees`` flags a method whose per-seed lifts have both signs: its mean lift is not a
direction the seeds agree on, whatever its size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def sign_test_p(lifts: Sequence[float]) -> float | None:
    """Exact two-sided sign test on the non-zero lifts; None when every lift is zero."""
    pos = sum(1 for x in lifts if x > 0)
    neg = sum(1 for x in lifts if x < 0)
    n = pos + neg
    if n == 0:
        return None
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t(lifts: Sequence[float]) -> tuple[float | None, float | None]:
    """(t, two-sided p) of the mean lift against 0; (None, None) below two seeds or with no spread
    (every lift equal: zero lifts give p = 1, equal non-zero lifts p = 0)."""
    n = len(lifts)
    if n < 2:
        return None, None
    mean = sum(lifts) / n
    var = sum((x - mean) ** 2 for x in lifts) / (n - 1)
    if var == 0.0:
        return (None, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / math.sqrt(var / n)
    return t, t_two_sided_p(t, n - 1)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (``0.5 < q < 1``) of Student's t with ``df`` degrees of freedom, by bisection
    on :func:`t_two_sided_p` (which falls monotonically in ``t >= 0``)."""
    if not 0.5 < q < 1.0 or df < 1:
        raise ValueError(f"t_quantile takes 0.5 < q < 1 and df >= 1, not q={q}, df={df}")
    target = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def mean_ci(lifts: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided ``level`` confidence interval of the mean lift; None below two seeds."""
    n = len(lifts)
    if n < 2:
        return None
    mean = sum(lifts) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in lifts) / (n - 1) / n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    return mean - half, mean + half


def lift_stats(runs: Mapping[str, Sequence[float]], reference: str = "base") -> dict[str, Any]:
    """Per method (not the reference): per-seed lifts, mean, std, sign test and paired t.

    ``runs``: method → per-seed metric, seeds in the same order for every method."""
    if reference not in runs:
        return {}
    ref = list(runs[reference])
    out: dict[str, Any] = {}
    for name, values in runs.items():
        if name == reference:
            continue
        if len(values) != len(ref):
            raise ValueError(f"{name}: {len(values)} seeds against {len(ref)} for {reference}")
        lifts = [float(v - r) for v, r in zip(values, ref, strict=True)]
        n = len(lifts)
        mean = sum(lifts) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in lifts) / (n - 1)) if n > 1 else 0.0
        t, p_t = paired_t(lifts)
        ci = mean_ci(lifts)
        out[name] = {
            "lifts": lifts,
            "mean": mean,
            "std": std,
            "positive": sum(1 for x in lifts if x > 0),
            "negative": sum(1 for x in lifts if x < 0),
            "sign_disagrees": any(x > 0 for x in lifts) and any(x < 0 for x in lifts),
            "sign_test_p": sign_test_p(lifts),
            "t": t,
            "t_test_p": p_t,
            "ci95": None if ci is None else [ci[0], ci[1]],
        }
    return out


def stats_section(stats: dict[str, Any], reference: str = "base") -> list[str]:
    """report.md lines: the lift table with p-values, and the flags."""
    if not stats:
        return []
    lines = [
        f"## Lift over {reference}, paired by seed",
        "",
        "Per-seed lifts share the seed with the reference run. Sign test: exact, two-sided (3 seeds "
        "cannot go below p = 0.25, 5 seeds below 0.0625); paired t: two-sided, n − 1 degrees of freedom; "
        "95% CI: of the mean lift, by the same t (it holds 0 when the seeds cannot tell the lift from none).",
        "",
        "| method | lift mean | std | 95% CI | per-seed lifts | + / − | sign test p | paired t | t-test p "
        "| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None or math.isnan(x) else format(x, fmt)

    for name, s in stats.items():
        per = ", ".join(f"{x:+.4f}" for x in s["lifts"])
        flag = "**seeds disagree in sign**" if s["sign_disagrees"] else ""
        ci = s.get("ci95")  # results.json written before the interval existed has none
        band = "–" if ci is None else f"{ci[0]:+.4f} .. {ci[1]:+.4f}"
        lines.append(
            f"| {name} | {s['mean']:+.4f} | {s['std']:.4f} | {band} | {per} | "
            f"{s['positive']} / {s['negative']} | {num(s['sign_test_p'], '.3f')} | {num(s['t'], '+.2f')} | "
            f"{num(s['t_test_p'], '.3f')} | {flag} |"
        )
    flagged = [n for n, s in stats.items() if s["sign_disagrees"]]
    if flagged:
        lines += [
            "",
            f"**Warning:** the seeds disagree on the sign of the lift of {', '.join(flagged)}: its mean is "
            "not a direction the data supports; read it as noise unless more seeds settle it.",
        ]
    return [*lines, ""]
