"""report.md and PNG plots for ``keep experiment``: our numbers beside the paper's (Tables 2, 3, 4, 7, 8)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trainer.stats import stats_section

#: The paper's Table 7 edges on super-domain clicks.
GROUP_EDGES = (50, 150, 300)
#: GAUC reported in the paper (CIKM'22). Tables 2-4 share the base 0.6310; Tables 7-8 the production base.
PAPER: dict[str, dict[str, float]] = {
    "2": {
        "base": 0.6310,
        "sample_merging": 0.6185,
        "conet": 0.6336,
        "darec": 0.6341,
        "keep_c": 0.6348,
        "bert4rec": 0.6326,
        "s3rec": 0.6341,
        "keep": 0.6380,
    },
    "3": {"base": 0.6310, "keep_ku": 0.6332, "keep_ku_ki": 0.6347, "keep": 0.6380},
    "4": {"base": 0.6310, "keep_click": 0.6368, "keep_click_cv": 0.6374, "keep": 0.6380},
    "8": {
        "keep": 0.6703,
        "keep_decomposition": 0.6691,
        "keep_degeneration": 0.6683,
        "keep_decomposition_degeneration": 0.6698,
    },
}
PAPER_TABLE7 = {
    "0-50": (0.6573, 0.6627),
    "50-150": (0.6628, 0.6668),
    "150-300": (0.6669, 0.6703),
    ">300": (0.6687, 0.6718),
}
ORDER = (
    "base", "sample_merging", "conet", "darec", "keep_c", "bert4rec", "s3rec", "keep",
    "keep_ku", "keep_ku_ki", "keep_click", "keep_click_cv",
    "keep_decomposition", "keep_degeneration", "keep_decomposition_degeneration",
)  # fmt: skip
TITLES = {
    "2": "Table 2 — overall (CTR)",
    "3": "Table 3 — K_u, K_i, K_ui",
    "4": "Table 4 — pre-training tasks",
    "8": "Table 8 — serving forms (lift vs keep)",
}


def user_groups(log: pd.DataFrame, users: np.ndarray) -> tuple[dict[str, str], dict[str, Any]]:
    """Test user → Table 7 group by their clicks in ``log`` (the super-domain log for Table 7).

    ``users`` holds one entry per test row, so a user's weight is their number of test impressions
    (GAUC's weight). Groups are half-open click ranges ``[lo, hi)``, like the paper's.

    The paper's edges (50, 150, 300 clicks over 8 days of Taobao) are kept when every group then holds
    at least 10% of the test impressions. On smaller data they would put almost everyone in the first
    group; then the edges are the test-impression-weighted quartiles of the click count. Click counts
    tie (many users have 0 or 1 click), so the groups' weights are as equal as the ties allow, not a
    quarter each (75/12/6/7% on ``tiny``): the report prints every group's share.
    """
    clicks = log.loc[log["click"] == 1, "user_id"].astype(str).value_counts()
    rows = pd.Series(np.asarray(users).astype(str)).value_counts(sort=False)
    ids = rows.index
    counts = clicks.reindex(ids, fill_value=0).to_numpy()
    weight = rows.to_numpy().astype(np.float64)
    total = max(float(weight.sum()), 1.0)

    def shares(edges: tuple[float, ...]) -> np.ndarray:
        which = np.searchsorted(np.asarray(edges), counts, side="right")
        return np.bincount(which, weights=weight, minlength=len(edges) + 1) / total

    edges: tuple[float, ...] = GROUP_EDGES
    rule = "paper"
    if len(counts) and shares(GROUP_EDGES).min() < 0.1:
        rule = "test-impression quartiles"
        order = np.argsort(counts, kind="stable")
        cum = np.cumsum(weight[order])
        quartiles: list[float] = []
        for q in (0.25, 0.5, 0.75):
            i = min(int(np.searchsorted(cum, q * total, side="right")), len(order) - 1)
            edge = float(max(counts[order[i]], 1))
            quartiles.append(max(edge, quartiles[-1] + 1) if quartiles else edge)
        edges = tuple(quartiles)
    labels = [
        f"0-{edges[0]:g}",
        f"{edges[0]:g}-{edges[1]:g}",
        f"{edges[1]:g}-{edges[2]:g}",
        f">={edges[2]:g}",
    ]
    if rule == "paper":
        labels[-1] = f">{edges[2]:g}"
    which = np.searchsorted(np.asarray(edges), counts, side="right")
    mapping = {str(u): labels[g] for u, g in zip(ids, which, strict=True)}
    sizes = {lab: int((which == i).sum()) for i, lab in enumerate(labels)}
    impressions = {lab: round(float(x), 4) for lab, x in zip(labels, shares(edges), strict=True)}
    return mapping, {
        "edges": list(edges),
        "rule": rule,
        "labels": labels,
        "users": sizes,
        "impression_share": impressions,
    }


def _fmt(x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def _oracle(result: dict[str, Any]) -> float | None:
    oracle = result.get("oracle")
    return None if not oracle else float(oracle["gauc"])


def _table(result: dict[str, Any], table: str) -> list[str]:
    methods = result["methods"]
    paper = PAPER[table]
    ref = "keep" if table == "8" else "base"
    ours_ref = methods.get(ref, {}).get("gauc", {}).get("mean")
    oracle = _oracle(result)
    extra = (" to oracle |", "---|") if oracle is not None else ("", "")
    lines = [
        f"### {TITLES[table]}",
        "",
        f"| method | GAUC (mean ± std) | lift vs {ref} | paper GAUC | paper lift |{extra[0]}",
        f"|---|---|---|---|---|{extra[1]}",
    ]
    for name, p in paper.items():
        m = methods.get(name)
        if m is None:
            ours, std, lift = None, None, None
        else:
            ours, std = m["gauc"]["mean"], m["gauc"]["std"]
            lift = None if ours_ref is None or name == ref else ours - ours_ref
        plift = None if name == ref else p - paper[ref]
        cell = "not run" if ours is None else f"{_fmt(ours)} ± {_fmt(std)}"
        gap = "" if oracle is None else f" {_fmt(None if ours is None else ours - oracle, True)} |"
        lines.append(f"| {name} | {cell} | {_fmt(lift, True)} | {p:.4f} | {_fmt(plift, True)} |{gap}")
    if oracle is not None:
        lift = None if ours_ref is None else oracle - ours_ref
        lines.append(f"| oracle (true click model) | {oracle:.4f} | {_fmt(lift, True)} | – | – | +0.0000 |")
    return [*lines, ""]


def _groups_table(result: dict[str, Any], key: str = "groups", title: str = "super-domain") -> list[str]:
    groups = result.get(key, {})
    if "base" not in groups or "keep" not in groups:
        return ["### Table 7 — user groups", "", "(needs `base` and `keep`)", ""]
    info = result.get(key.replace("groups", "group_edges"), {})
    labels = info.get("labels", list(groups["base"]))
    lines = [f"### Table 7 — GAUC by {title} clicks of the test user", ""]
    if info.get("rule", "paper") != "paper":
        lines += [
            f"Edges {info.get('edges')}: quartiles of the click count weighted by test impressions (the "
            "groups' shares of the GAUC weight are in the table: ties in the click counts keep them "
            "from being a quarter each); the paper's 50/150/300 would leave a group with under 10% of "
            "this data's test impressions.",
            "",
        ]
    shares = info.get("impression_share", {})
    lines += [
        "| group | users | test impressions | base | keep | lift | paper group | paper lift |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lab, (paper_name, (pb, pk)) in zip(labels, PAPER_TABLE7.items(), strict=False):
        b, k = groups["base"].get(lab), groups["keep"].get(lab)
        lift = None if b is None or k is None else k - b
        n = info.get("users", {}).get(lab, "")
        share = f"{shares[lab]:.0%}" if lab in shares else ""
        lines.append(
            f"| {lab} | {n} | {share} | {_fmt(b)} | {_fmt(k)} | {_fmt(lift, True)} | {paper_name} "
            f"| {pk - pb:+.4f} |"
        )
    return [*lines, ""]


def extractor_section(extractors: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The pre-trained extractors: held-out per-task GAUC/AUC, passes, score on the sub-domain."""
    if not extractors:
        return []
    lines = [
        "## Extractors",
        "",
        "Held out: a super-domain day the extractor did not train on (early stopping's validation day "
        "when every day was trained on). Sub-domain: its own click score on the downstream validation "
        "day (never the test day); near 0.5, its knowledge carries little for the downstream model.",
        "",
        "| extractor | seed | passes | held-out click GAUC / AUC | popularity GAUC | conversion GAUC | "
        "cart GAUC | sub-domain click GAUC / AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def g(entry: dict[str, Any] | None, key: str) -> str:
        value = (entry or {}).get(key)
        return "–" if value is None else f"{value:.4f}"

    for key, runs in extractors.items():
        for r in runs:
            held = r.get("held_out", {})
            click = held.get("click")
            sub = r.get("sub_domain_validation", {}).get("click")
            lines.append(
                f"| {key} | {r['seed']} | {r.get('passes', {}).get('passes', '–')} | {g(click, 'gauc')} / "
                f"{g(click, 'auc')} | {g(click, 'gauc_popularity')} | {g(held.get('conversion'), 'gauc')} | "
                f"{g(held.get('cart'), 'gauc')} | {g(sub, 'gauc')} / {g(sub, 'auc')} |"
            )
    rules = {r.get("passes", {}).get("rule") for runs in extractors.values() for r in runs} - {None}
    lines += ["", *(f"- passes: {rule}" for rule in sorted(rules))]
    return [*lines, ""]


def render(result: dict[str, Any]) -> str:
    ds = result["dataset"]
    lines = [
        "# KEEP experiment",
        "",
        f"Data: super {ds['super']['rows']} rows / {ds['super']['users']} users; train {ds['train']['rows']} "
        f"rows; test {ds['test']['rows']} rows / {ds['test']['users']} users. Seeds: {result['seeds']}. "
        f"Wall time: {result.get('wall_seconds', 0):.0f} s.",
        "",
        "Epochs per method are picked on the last training day (validation), never on the test day.",
        "",
    ]
    oracle = _oracle(result)
    if oracle is not None:
        o = result["oracle"]
        lines += [
            f"Oracle: the true click model of this synthetic world (`{o.get('truth')}`, world "
            f"`{o.get('world')}`, synth seed {o.get('synth_seed')}) scores the test day at GAUC "
            f"{oracle:.4f}: the ceiling. Every table's *to oracle* is a method's GAUC minus it.",
            "",
        ]
    extra = (" to oracle |", "---|") if oracle is not None else ("", "")
    lines += [
        "## All methods",
        "",
        f"| method | GAUC mean | std | AUC mean | runs | epochs |{extra[0]}",
        f"|---|---|---|---|---|---|{extra[1]}",
    ]
    for name in sorted(result["methods"], key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        m = result["methods"][name]
        runs = ", ".join(f"{x:.4f}" for x in m["gauc"]["runs"])
        gap = "" if oracle is None else f" {m['gauc']['mean'] - oracle:+.4f} |"
        lines.append(
            f"| {name} | {m['gauc']['mean']:.4f} | {m['gauc']['std']:.4f} | {m['auc']['mean']:.4f} | "
            f"{runs} | {m.get('epochs', '')} |{gap}"
        )
    lines += ["", *stats_section(result.get("stats", {}).get("gauc", {}))]
    lines += extractor_section(result.get("extractor", {}))
    lines += ["## Side by side with the paper", ""]
    for table in ("2", "3", "4"):
        lines += _table(result, table)
    lines += _groups_table(result)
    lines += _groups_table(result, "groups_sub", "downstream (sub-domain) training-log")
    lines += _table(result, "8")
    lines += [
        "![GAUC per method](gauc_by_method.png)",
        "",
        "![GAUC lift per user group](gauc_lift_by_group.png)",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    methods = result["methods"]
    names = sorted(methods, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
    means = [methods[n]["gauc"]["mean"] for n in names]
    stds = [methods[n]["gauc"]["std"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names)), 4.0))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    low = min(m - s for m, s in zip(means, stds, strict=True))
    high = max(m + s for m, s in zip(means, stds, strict=True))
    pad = max(0.005, 0.1 * (high - low))
    ax.set_ylim(low - pad, high + pad)
    ax.set_ylabel("test GAUC (mean ± std over seeds)")
    fig.tight_layout()
    paths.append(out / "gauc_by_method.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    groups = result.get("groups", {})
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    if "base" in groups:
        labels = result.get("group_edges", {}).get("labels") or list(groups["base"])
        others = [n for n in groups if n != "base"]
        width = 0.8 / max(1, len(others))
        for j, name in enumerate(others):
            lifts = [groups[name].get(g, math.nan) - groups["base"].get(g, math.nan) for g in labels]
            ax.bar([i + j * width for i in range(len(labels))], lifts, width=width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels)
        ax.axhline(0, color="black", lw=0.6)
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("test users by super-domain clicks")
    ax.set_ylabel("GAUC lift over base")
    fig.tight_layout()
    paths.append(out / "gauc_lift_by_group.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_report(result: dict[str, Any], out: Path) -> Path:
    plot(result, out)
    path = out / "report.md"
    path.write_text(render(result))
    return path
