"""Every sentence the verdicts say, written from the numbers the judges return (analysis/verdicts.py holds no
prose). Kept apart so that the statistics can be audited without reading English, and the English without
reading statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# ------------------------------------------------------------------------------------------------- the claims
# claim id -> (what the thread says, what is measured, how it is compared); analysis/verdicts.py builds CLAIMS
CLAIM_TEXT: dict[str, tuple[str, str, str]] = {
    "C1": (
        "batch size mainly buys speed: more parallel rows per step, higher throughput",
        "speed-phase tokens/s (each point timed alone, rounds interleaved); what batch size does to learning (C2)",
        "per cell × num_steps: log-log slope of tokens/s on batch size (t-interval over rounds) and largest/"
        "smallest batch ratio (t-interval on paired-by-round log ratios); then C2's verdict in the split",
    ),
    "C2": (
        "batch size does not change what the network learns (“their loss is usually very close”)",
        "final held-out loss (nats), accuracy (points), memory capacity (lags recalled)",
        "TOST equivalence of largest vs smallest batch size within each cell × num_steps (90 % Welch "
        "interval of the absolute difference inside ±margin); groups at chance are uninformative",
    ),
    "C3": (
        "batch_size=4 is about 4 times faster than batch_size=1",
        "speed-phase tokens/s",
        "t-interval of the paired-by-round log ratio tokens/s(4b)/tokens/s(b) per cell × num_steps: inside, "
        "outside or straddling the band around 4",
    ),
    "C4": (
        "num_steps sets how long a dependency the network learns",
        "memory capacity from the per-lag accuracy curve; recalled span vs num_steps",
        "(a) growth at equal tokens: Spearman ρ vs num_steps per cell × batch_size, permutation p; (b) bound: "
        "share of runs whose span exceeds num_steps",
    ),
    "C5": (
        "a large num_steps can make gradients explode",
        "log-log slope of a window's gradient norm against window length at fixed parameters (trained and "
        "initial net); clip fraction; diverged runs",
        "t-interval over seeds of the slope per grid point vs a minimum slope; divergences by num_steps",
    ),
    "C6": (
        "so: choose num_steps by the dependency length, batch_size by the hardware and data",
        "the verdicts of C1, C2 and C4 at equal tokens",
        "supported only where C1, C2 and C4 all are; refuted where one of them is",
    ),
    "C7": (
        "batch_size=1 is cheap per update but very erratic",
        "update-to-update loss jitter in nats (loss_jitter); speed-phase µs per update",
        "Welch t-interval of the log jitter ratio batch 1 / batch b per cell × num_steps vs a minimum factor; "
        "paired-by-round µs/update ratio batch 1 / batch 4",
    ),
}


# ------------------------------------------------------------------------------------------------ the reasons
# Why a split is inconclusive or a group uninformative: code (what the judges return) -> sentence. The judges
# pass the numbers each sentence quotes.
REASONS: dict[str, str] = {
    "no_speed": "no speed phase: tokens/s of training runs were timed under load",
    "no_complete_runs": "no complete runs",
    "few_seeds": (
        "only {seeds:g} seed(s) per grid point (need {need} for a t-interval; a percentile interval of fewer "
        "values is not a 95 % CI)"
    ),
    "speed_no_pairs": "the speed phase has no cell × num_steps point with two batch sizes timed",
    "speed_no_task": "the speed phase timed no point of task {task}",
    "speed_no_ratio_pair": "the speed phase has no pair of batch sizes b and {target:g}·b",
    "speed_too_few_rounds": "no cell × num_steps point timed batch {small:g} and {big:g} in enough rounds",
    "uniform_guess": "every batch size at the uniform-guess loss ln V = {ln_v:.2f} nats",
    "at_chance": "every batch size at chance (accuracy upper bound < {bound:.2f})",
    "few_batch_sizes": "only {n} batch size(s)",
    "few_seeds_at_batch": "fewer than {need} seeds at batch {small:g} or {big:g}",
    "no_informative_c2_group": "no informative cell × num_steps group (see the uninformative groups)",
    "growth_equal_tokens_only": "growth is judged at equal tokens only",
    "few_seeds_at_num_steps": "fewer than {need} seeds at some num_steps",
    "beyond_longest_lag": "every num_steps exceeds the longest lag tested ({lag:g}): growth cannot show",
    "nothing_learned": "nothing learned at any num_steps ({measure} < {floor:g})",
    "no_informative_c4_group": "no informative cell × batch_size group",
    "no_span": "no recalled span",
    "few_num_steps": "only {n} value(s) of num_steps",
    "no_growth_slope": "measure missing: the records have no gradient-growth slope (growth_slope)",
    "diverged": "diverged",
    "no_jitter": "measure missing: the records have no loss jitter ({outcome})",
    "no_batch_1": "no batch_size=1 runs",
    "no_c7_group": "no cell × num_steps group has batch 1 and a larger batch with enough seeds",
    "c6_equal_tokens_only": "C6 is judged at equal tokens only",
}


def reason(code: str, **values: Any) -> str:
    """The sentence for a reason code, with the numbers the judge passed."""
    return REASONS[code].format(**values)


def f(x: Any, fmt: str = ".2f") -> str:
    try:
        return "n/a" if x is None or not np.isfinite(float(x)) else format(float(x), fmt)
    except (TypeError, ValueError):
        return str(x)


# ---------------------------------------------------------------------------------------- per deciding row
def why_speed(r: Any) -> str:
    return (
        f"tokens/s slope on batch size {f(r.slope)} [{f(r.slope_low)}, {f(r.slope_high)}]; batch "
        f"{r.bs_large:g}/{r.bs_small:g} = {f(r.ratio)}× [{f(r.ratio_low)}, {f(r.ratio_high)}] over {r.rounds} rounds"
    )


def why_c2(r: Any) -> str:
    return (
        f"{r.group}: {r.outcome} batch {r.bs_large:g} − batch {r.bs_small:g} = {f(r.diff, '.3f')} {r.unit}, 90 % CI "
        f"[{f(r.ci90_low, '.3f')}, {f(r.ci90_high, '.3f')}] vs ±{r.margin:g} → {r.state}"
    )


def why_c3(r: Any) -> str:
    flag = " (superlinear: a measurement problem)" if r.superlinear else ""
    return f"{f(r.ratio)}× [{f(r.ci_low)}, {f(r.ci_high)}] over {r.rounds} rounds → {r.state}{flag}"


def why_c4_growth(r: dict[str, Any]) -> str:
    return (
        f"{r['group']}: {r['measure']} {f(r['mean_low'])} at num_steps {r['ns_low']:g} → {f(r['mean_high'])} at "
        f"{r['ns_high']:g}, Spearman ρ {f(r['rho'])}, permutation p {f(r['p'], '.3f')}"
    )


def why_c4_bound(r: Any) -> str:
    return f"span {r.span_value:g} > num_steps {r.num_steps:g}"


def why_c5(r: Any) -> str:
    return (
        f"{r.cell} batch {r.batch_size:g} num_steps {r.num_steps:g}: growth slope {f(r.slope)} "
        f"[{f(r.ci_low)}, {f(r.ci_high)}] → {r.state}"
    )


def why_c7(r: Any) -> str:
    return (
        f"{r.cell} num_steps {r.num_steps:g}: loss jitter batch 1 / batch {r.batch_size:g} = {f(r.ratio)}× "
        f"[{f(r.ci_low)}, {f(r.ci_high)}] → {r.state}"
    )


# ------------------------------------------------------------------------------------------------ per split
def statistic(cid: str, r: Any) -> str:
    n = r.numbers
    if r.reason is not None and not n:
        return "—"
    if cid == "C1":
        return (
            f"{n['faster']}/{n['points']} points faster beyond noise; median slope {f(n['median_slope'])}, batch "
            f"{n['bs_large']:g}/{n['bs_small']:g} {f(n['median_ratio'], '.1f')}× (median); C2 {n['c2']}"
        )
    if cid == "C2":
        return (
            f"{n['equivalent']} equivalent / {n['different']} different / {n['undecided']} undecided of "
            f"{n['groups']} informative groups ({n['uninformative']} uninformative)"
        )
    if cid == "C3":
        return (
            f"batch {n['big']:g}/{n['small']:g} = {f(n['median'])}× (median, range {f(n['min'])}–{f(n['max'])}); "
            f"CI inside [{n['band'][0]:g}, {n['band'][1]:g}] {n['inside']}/{n['points']}, outside {n['outside']}, "
            f"straddling {n['straddling']}" + (f"; {n['flagged']} superlinear (flagged)" if n["flagged"] else "")
        )
    if cid == "C4":
        g = (
            f"growth {n['growth']} ({n['growing']}/{n['growth_groups']} groups grow)"
            if "growth_groups" in n
            else f"growth {n['growth']} ({reason(n['growth_reason']) if n.get('growth_reason') else ''})"
        )
        b = (
            f"bound {n['bound']} ({n['exceeding']}/{n['runs']} runs span > num_steps, largest excess "
            f"{f(n['max_excess'], 'g')})"
            if "runs" in n
            else f"bound {n['bound']}"
        )
        return f"{g}; {b}"
    if cid == "C5":
        return (
            f"{n['explodes']}/{n['points']} points with slope CI above {n['min_slope']:g}, {n['bounded']} below; "
            f"{n['diverged']} diverged; clip fraction vs num_steps ρ {f(n['clip_rho'])}"
        )
    if cid == "C6":
        return ", ".join(f"{k} {v}" for k, v in n["parts"].items())
    if cid == "C7":
        cheap = (
            f"µs/update batch 1/batch 4 {f(n['median_us_ratio'])}× (cheaper at {n['cheaper']}/{n['cheap_points']})"
            if "cheap_points" in n
            else "cost per update not measured"
        )
        return (
            f"loss jitter batch 1 / larger {f(n['median_ratio'])}× (median); erratic {n['erratic']}/{n['groups']}, "
            f"calm {n['calm']}; {cheap}"
        )
    return "—"


def sentence(cid: str, r: Any) -> str:
    n = r.numbers
    if r.reason is not None and cid != "C6":
        return f"Inconclusive: {r.reason}."
    if cid == "C1":
        speed = {
            "supported": "Throughput rose with batch size",
            "refuted": "Throughput did not rise reliably with batch size",
            "mixed": "Throughput rose with batch size at some points only",
        }[n["speed_part"]]
        learn = {
            "supported": " and batch size left what was learned alone (C2 supported), so speed is mainly what it buys",
            "refuted": " but batch size also changed what was learned (C2 refuted), so it does not buy only speed",
            "inconclusive": "; whether it also changes learning is undecided (C2 inconclusive)",
            "mixed": "; C2 is mixed",
        }[n["c2"]]
        return (
            f"{speed} in {n['faster']} of {n['points']} cell × num_steps points of the speed phase (batch "
            f"{n['bs_small']:g}–{n['bs_large']:g}, {n['bs_large'] / n['bs_small']:g}×; median "
            f"{f(n['median_ratio'], '.1f')}× tokens/s; round-to-round CV up to {f(100 * n['max_round_cv'], '.1f')} %)"
            f"{learn}."
        )
    if cid == "C2":
        margins = ", ".join(f"{o} ±{m:g} {u}" for o, (m, u) in n["margins"].items())
        lead = {
            "supported": "Batch sizes ended equivalent",
            "refuted": "Batch size changed what was learned",
            "inconclusive": "Inconclusive",
        }[r.verdict]
        return (
            f"{lead}: largest vs smallest batch size within each cell × num_steps, TOST with margins {margins}: "
            f"{n['equivalent']} equivalent, {n['different']} different, {n['undecided']} undecided of {n['groups']} "
            f"informative groups; {n['uninformative']} groups at chance or short of seeds were not counted."
        )
    if cid == "C3":
        return (
            f"Batch {n['big']:g} ran {f(n['median'])}× the tokens/s of batch {n['small']:g} (median over {n['points']} "
            f"points, range {f(n['min'])}–{f(n['max'])}); the interval lay inside the band [{n['band'][0]:g}, "
            f"{n['band'][1]:g}] at {n['inside']}, wholly outside at {n['outside']}, straddling at {n['straddling']}"
            + (f"; {n['flagged']} superlinear points flagged as a measurement problem" if n["flagged"] else "")
            + "."
        )
    if cid == "C4":
        parts = [statistic(cid, r)]
        if n.get("horizon_unflagged"):
            parts.append(f"{n['horizon_unflagged']} gradient horizons without censoring flags were not used")
        if n.get("context_old"):
            parts.append(
                f"{n['context_old']} effective contexts from the zero-state ablation of older records were not used"
            )
        return f"{r.verdict.capitalize()}: " + "; ".join(parts) + "."
    if cid == "C5":
        return (
            f"{r.verdict.capitalize()}: a window's gradient norm at fixed parameters grew faster than L^"
            f"{n['min_slope']:g} at {n['explodes']} of {n['points']} grid points (interval over seeds), stayed "
            f"below at {n['bounded']}; {n['diverged']} runs diverged (by num_steps: {n['diverged_by_ns']})."
        )
    if cid == "C6":
        parts = ", ".join(f"{k} {v}" for k, v in n["parts"].items())
        if n.get("equal_tokens"):
            return f"{r.verdict.capitalize()} at equal tokens: {parts}."
        ref = ", ".join(f"{k} {v}" for k, v in n.get("at_equal_tokens", {}).items()) or "no equal-token split"
        return f"Not judged at equal updates ({parts}); at equal tokens: {ref}."
    if cid == "C7":
        return f"{r.verdict.capitalize()}: {statistic(cid, r)}."
    return "—"


def overall(cid: str, verdict: str, table: pd.DataFrame) -> tuple[str, str]:
    """The claim's statistic and sentence across splits."""
    if table.empty:
        return "—", "Inconclusive: no finished run to judge."
    if len(table) == 1:
        return table["statistic"].iloc[0], table["sentence"].iloc[0]
    statistic = "\n".join(f"{s}: {t}" for s, t in zip(table["split"], table["statistic"], strict=True))
    by: dict[str, list[str]] = {}
    for s, v in zip(table["split"], table["verdict"], strict=True):
        by.setdefault(v, []).append(s)
    first = table[table["verdict"] == verdict] if verdict in by else table
    if verdict != "mixed":
        rest = len(table) - len(by.get(verdict, []))
        also = f" ({rest} inconclusive)" if rest and verdict != "inconclusive" else ""
        return statistic, (
            f"{verdict.capitalize()} in {len(by.get(verdict, []))} of {len(table)} settings{also}. In "
            f"{first['split'].iloc[0]}: {first['sentence'].iloc[0]}"
        )
    where = "; ".join(f"{v} in {', '.join(s)}" for v, s in by.items())
    examples = " ".join(
        f"In {s[0]}: {table.loc[table['split'] == s[0], 'sentence'].iloc[0]}"
        for v, s in by.items()
        if v != "inconclusive"
    )
    return statistic, f"Mixed — {where}. {examples}"
