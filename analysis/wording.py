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
        "wall-clock time to target (the crossing of the runs trained to a plateau, at the speed phase's tokens/s); "
        "plateau quality of the same pair (C2); speed-phase throughput and the fitted B_crit as evidence",
        "per cell × num_steps and each neighbouring pair of batch sizes (and 1 vs 4): Welch interval of the log "
        "ratio of seconds to target, with the direction of C2's test on the pair",
    ),
    "C2": (
        "batch size does not change what the network learns (“their loss is usually very close”)",
        "held-out loss (nats), accuracy (points), memory capacity (lags recalled) of runs trained to a plateau",
        "TOST equivalence on absolute margins for the thread's pair (1, 4) and each neighbouring pair of batch "
        "sizes within each cell × num_steps, Holm-corrected across the pairs of a setting; a pair is "
        "informative only where one of its two batch sizes clearly learned",
    ),
    "C3": (
        "batch_size=4 is about 4 times faster than batch_size=1",
        "speed-phase tokens/s",
        "t-interval of the paired-by-round log ratio tokens/s(4b)/tokens/s(b) per cell × num_steps: inside, "
        "outside or straddling the band around 4",
    ),
    "C4": (
        "num_steps sets how long a dependency the network learns",
        "echo: accuracy at the lag for windows up to and beyond it; lags: memory capacity and recalled span; text: "
        "effective context (warm-unigram); each against num_steps",
        "which reading holds: a floor (windows no longer than the lag stay at chance, longer ones learn), a "
        "setting (Spearman ρ of the learned length vs num_steps, permutation p, and the length within num_steps) "
        "or neither (the learned length exceeds num_steps)",
    ),
    "C5": (
        "a large num_steps can make gradients explode",
        "state-to-state Jacobian product log-norm against L at fixed parameters; log-log slope of a window's "
        "gradient norm against L (as under a mean loss); divergences and clip fraction by num_steps",
        "a “can” claim: shown where a Jacobian slope interval lies above its minimum with the product above "
        "norm-preserving, or the gradient slope interval above 0 at two or more num_steps, or divergences or "
        "clipping rise with num_steps; never refuted by a regime that does not show it",
    ),
    "C6": (
        "so: choose num_steps by the dependency length, batch_size by the hardware and data",
        "the verdicts of C1, C2 and C4 in the same setting",
        "in each setting trained to a plateau: supported only where C1, C2 and C4 all are; refuted where one is",
    ),
    "C7": (
        "batch_size=1 is cheap per update but very erratic",
        "param_jitter: update-to-update loss change on one fixed held-out batch (how far the parameters move), "
        "beside sampling_jitter (minibatch noise at fixed parameters); speed-phase µs per update",
        "Welch t-interval of the log param_jitter ratio batch 1 / batch b per cell × num_steps vs a minimum "
        "factor, the sampling-jitter ratio beside its √b expectation; paired-by-round µs/update batch 1 / batch 4",
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
    "speed_no_task": "the speed phase timed no point of task {task}",
    "speed_no_ratio_pair": "the speed phase has no pair of batch sizes b and {target:g}·b",
    "speed_too_few_rounds": "no cell × num_steps point timed batch {small:g} and {big:g} in enough rounds",
    "pair_uniform_guess": (
        "neither batch {small:g} nor batch {big:g} clearly below the uniform-guess loss ln V = {ln_v:.2f} nats"
    ),
    "pair_at_chance": (
        "neither batch {small:g} nor batch {big:g} clearly above chance (accuracy interval's lower end ≤ {bound:.2f})"
    ),
    "few_batch_sizes": "only {n} batch size(s)",
    "few_seeds_at_batch": "fewer than {need} seeds at batch {small:g} or {big:g}",
    "no_informative_c2_group": "no informative pair of batch sizes (see the uninformative groups)",
    "c2_plateau_only": (
        "not judged here: a fixed budget (equal tokens or updates) measures how fast a batch size learns, not what "
        "it learns once trained; C2 is judged on runs trained to a plateau"
    ),
    "c1_plateau_only": (
        "not judged here: time to target at matched final quality needs runs trained to a plateau; at a fixed "
        "budget the gap is learning speed"
    ),
    "no_time_to_target": "no time to target: no crossing table and no updates_to_target column",
    "c1_no_target": "neither batch size reached the target",
    "c1_not_timed": "the speed phase did not time this point: no wall-clock time to target",
    "c1_no_quality": "the pair's plateau quality is not comparable (C2 left it out)",
    "no_informative_c1_pair": "no pair of batch sizes with a time to target and a comparable plateau quality",
    "c4_not_at_equal_updates": (
        "not judged here: at equal updates a longer window also sees more data; C4 is judged at a plateau or at "
        "equal tokens"
    ),
    "few_seeds_at_num_steps": "fewer than {need} seeds at some num_steps",
    "beyond_longest_lag": "every num_steps exceeds the longest lag tested ({lag:g}): no window is too short for it",
    "floor_no_long_window": "no num_steps longer than the lag ({lag:g}): nothing could learn it",
    "no_floor_measure": "no accuracy at the lag with a chance level",
    "nothing_learned": "nothing learned at any num_steps ({measure} < {floor:g})",
    "no_informative_c4_group": "no informative cell × batch_size group",
    "no_span": "no recalled span or effective context",
    "few_num_steps": "only {n} value(s) of num_steps",
    "no_growth_slope": "measure missing: the records have no gradient-growth slope or Jacobian product",
    "not_seen": "not seen in this regime",
    "diverged": "diverged",
    "no_jitter": "measure missing: the records have no {outcome}",
    "no_batch_1": "no batch_size=1 runs",
    "no_c7_group": "no cell × num_steps group has batch 1 and a larger batch with enough seeds",
    "c6_plateau_only": "C6 is judged in settings trained to a plateau only",
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


def why_c1(r: Any) -> str:
    time = (
        f"seconds to target batch {r.bs_large:g} / batch {r.bs_small:g} = {f(r.seconds_ratio)}× "
        f"[{f(r.ci_low)}, {f(r.ci_high)}]"
        if np.isfinite(r.seconds_ratio)
        else "target reached by one batch size only"
    )
    return f"{r.group}: {time} → {r.time}; plateau quality {r.quality} → {r.state}"


def why_c2(r: Any) -> str:
    return (
        f"{r.group}: {r.outcome} batch {r.bs_large:g} − batch {r.bs_small:g} = {f(r.diff, '.3f')} {r.unit}, 90 % CI "
        f"[{f(r.ci90_low, '.3f')}, {f(r.ci90_high, '.3f')}] vs ±{r.margin:g}; Holm-adjusted p equivalent "
        f"{f(r.p_tost_holm, '.3f')}, different {f(r.p_different_holm, '.3f')} → {r.group_state}"
    )


def why_c3(r: Any) -> str:
    flag = " (superlinear: a measurement problem)" if r.superlinear else ""
    return f"{f(r.ratio)}× [{f(r.ci_low)}, {f(r.ci_high)}] over {r.rounds} rounds → {r.state}{flag}"


def why_c4_floor(r: dict[str, Any]) -> str:
    return (
        f"{r['group']}: {r['measure']} {f(r['short_max'])} at num_steps ≤ {r['ns_short']:g} (lag {r['lag']:g}, "
        f"chance {f(r['chance'])}) vs {f(r['long_max'])} at num_steps ≥ {r['ns_long']:g} → {r['state']}"
    )


def why_c4_growth(r: dict[str, Any]) -> str:
    return (
        f"{r['group']}: {r['measure']} {f(r['mean_low'])} at num_steps {r['ns_low']:g} → {f(r['mean_high'])} at "
        f"{r['ns_high']:g}, Spearman ρ {f(r['rho'])}, permutation p {f(r['p'], '.3f')} → {r['state']}"
    )


def why_c4_bound(r: Any) -> str:
    return f"learned length {r.span_value:g} > num_steps {r.num_steps:g}"


def why_c5(r: Any) -> str:
    routes = [
        name
        for name, hit in (
            ("Jacobian product (trained)", r.jacobian_explodes),
            ("Jacobian product (initial)", r.jacobian_explodes_initial),
            ("gradient growth at two or more num_steps", r.growth_explodes),
        )
        if hit
    ]
    return (
        f"{r.cell} batch {r.batch_size:g} num_steps {r.num_steps:g} ({r.loss_reduction} loss): Jacobian slope "
        f"{f(r.jacobian_slope, '.3f')} [{f(r.jacobian_ci_low, '.3f')}, {f(r.jacobian_ci_high, '.3f')}] per step; "
        f"gradient slope {f(r.slope)} [{f(r.ci_low)}, {f(r.ci_high)}] → {r.state}"
        + (f" ({', '.join(routes)})" if routes else "")
    )


def why_c7(r: Any) -> str:
    return (
        f"{r.cell} num_steps {r.num_steps:g}: {r.outcome} batch 1 / batch {r.batch_size:g} = {f(r.ratio)}× "
        f"[{f(r.ci_low)}, {f(r.ci_high)}] → {r.state}; sampling jitter {f(r.sampling_ratio)}× "
        f"(√b expectation {f(r.sampling_expected)}×)"
    )


# ------------------------------------------------------------------------------------------------ per split
def _per_cell(values: dict[str, float], fmt: str = "g") -> str:
    return ", ".join(f"{k}: {f(v, fmt)}" for k, v in values.items()) or "n/a"


def statistic(cid: str, r: Any) -> str:
    n = r.numbers
    if r.reason is not None and (not n or not r.applicable):
        return "—"
    if cid == "C1":
        speed = (
            f"; speed phase: throughput {'rose' if n['speed_rose'] else 'did not rise reliably'} with batch size "
            f"(faster beyond noise at {n['speed_faster']}/{n['speed_points']} points), batch "
            f"{n['bs_large']:g}/{n['bs_small']:g} {f(n['median_ratio'], '.1f')}× (median)"
            if n.get("speed_points")
            else "; no speed-phase throughput"
        )
        return (
            f"{n['buys_speed']} of {n['pairs']} pairs buy speed at matched quality ({n['learns_more']} of them with "
            f"the larger batch learning more), {n['no_speed']} slower, {n['costs_quality']} cost quality, "
            f"{n['undecided']} undecided ({n['uninformative']} uninformative)" + speed
        )
    if cid == "C2":
        thread = (
            f"; thread's pair 1 vs 4: {n['thread_equivalent']} equivalent, {n['thread_different']} different of "
            f"{n['thread_pairs']}"
            if n["thread_pairs"]
            else "; no 1 vs 4 pair"
        )
        return (
            f"{n['equivalent']} equivalent / {n['different']} different ({n['larger_better']} with the larger batch "
            f"better) / {n['undecided']} undecided of {n['groups']} informative pairs, Holm-corrected "
            f"({n['uninformative']} uninformative)" + thread
        )
    if cid == "C3":
        return (
            f"batch {n['big']:g}/{n['small']:g} = {f(n['median'])}× (median, range {f(n['min'])}–{f(n['max'])}); "
            f"CI inside [{n['band'][0]:g}, {n['band'][1]:g}] {n['inside']}/{n['points']}, outside {n['outside']}, "
            f"straddling {n['straddling']}" + (f"; {n['flagged']} superlinear (flagged)" if n["flagged"] else "")
        )
    if cid == "C4":
        reading = f"reading: {n['reading'] or 'undecided'}"
        b = (
            f"{n['exceeding']}/{n['runs']} runs with {n['bound_measure']} > num_steps (largest excess "
            f"{f(n['max_excess'], 'g')})"
            if "runs" in n
            else "no learned length to bound"
        )
        if n["kind"] == "floor":
            floor = (
                f"floor in {n['floor']}/{n['floor_groups']} groups, broken in {n['broken']}"
                if "floor_groups" in n
                else reason(n["floor_reason"])
            )
            return f"{reading}; {floor}; echo's span is 0 or the lag, so its bound cannot fail: {b}"
        g = (
            f"growth {n['growth']} ({n['growing']}/{n['growth_groups']} groups grow, {n['shrinking']} shrink)"
            if "growth_groups" in n
            else f"growth {n['growth']} ({reason(n['growth_reason'])})"
        )
        return f"{reading}; {g}; bound {n['bound']}: {b}"
    if cid == "C5":
        ro = n["routes"]
        return (
            f"{n['explodes']}/{n['points']} grid points explode (Jacobian {ro['jacobian']}, gradient growth at ≥ "
            f"{n['min_num_steps']} num_steps {ro['growth']}); divergences rise with num_steps: "
            f"{'yes' if ro['divergence'] else 'no'} ({n['diverged']} diverged); clipping rises: "
            f"{'yes' if ro['clipping'] else 'no'}"
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
            f"{n['outcome']} batch 1 / larger {f(n['median_ratio'])}× (median); erratic {n['erratic']}/{n['groups']}, "
            f"calm {n['calm']}; sampling jitter {f(n['median_sampling_ratio'])}× (√b expectation "
            f"{f(n['median_sampling_expected'])}×); {cheap}"
        )
    return "—"


def sentence(cid: str, r: Any) -> str:
    n = r.numbers
    if cid == "C5" and r.reason_code == "not_seen":
        return (
            f"Not seen in this regime ({', '.join(n['cells'])}, num_steps "
            f"{', '.join(format(x, 'g') for x in n['num_steps'])}, {'/'.join(n['loss_reductions'])} loss): "
            f"{statistic(cid, r)}."
        )
    if r.reason is not None and cid != "C6":
        return f"{'Not judged' if not r.applicable else 'Inconclusive'}: {r.reason}."
    if cid == "C1":
        lead = {
            "supported": "Batch size bought speed",
            "refuted": "Batch size did not buy speed at matched quality",
            "inconclusive": "Inconclusive",
        }[r.verdict]
        up_to = _per_cell(n["up_to"])
        crit = f"; fitted B_crit {_per_cell(n['b_crit'], '.3g')}" if n["b_crit"] else ""
        return (
            f"{lead}: wall-clock time to target against plateau quality, pair by pair: {statistic(cid, r)}. "
            f"Largest batch size up to which time to target kept falling at matched quality: {up_to}{crit}."
        )
    if cid == "C2":
        margins = ", ".join(f"{o} ±{m:g} {u}" for o, (m, u) in n["margins"].items())
        lead = {
            "supported": "Batch sizes ended equivalent",
            "refuted": "Batch size changed what was learned",
            "inconclusive": "Inconclusive",
        }[r.verdict]
        return (
            f"{lead} once trained to a plateau: neighbouring batch sizes and 1 vs 4 within each cell × num_steps, "
            f"TOST with margins {margins}, Holm-corrected over {n['tests']} tests: {statistic(cid, r)}; pairs where "
            "neither batch size clearly learned were not counted."
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
        if n.get("context_usable"):
            parts.append(
                f"effective context (warm-unigram) vs num_steps ρ {f(n['context_rho'])}, above num_steps in "
                f"{n['context_over']} of {n['context_usable']} runs"
            )
        if n.get("horizon_unflagged"):
            parts.append(f"{n['horizon_unflagged']} gradient horizons without censoring flags were not used")
        if n.get("context_old"):
            parts.append(
                f"{n['context_old']} effective contexts from the zero-state ablation of older records were not used"
            )
        return f"{r.verdict.capitalize()}: " + "; ".join(parts) + "."
    if cid == "C5":
        return (
            f"Shown in this regime: {statistic(cid, r)} (Jacobian slope minimum {n['min_jacobian_slope']:g} per "
            f"step; gradient slope, as under a mean loss, above {n['min_slope']:g}; divergences by num_steps "
            f"{n['diverged_by_ns']})."
        )
    if cid == "C6":
        parts = ", ".join(f"{k} {v}" for k, v in n["parts"].items())
        if n.get("plateau"):
            return f"{r.verdict.capitalize()} once trained to a plateau: {parts}."
        ref = ", ".join(f"{k} {v}" for k, v in n.get("at_plateau", {}).items()) or "no plateau setting"
        return f"Not judged at a fixed budget ({parts}); trained to a plateau: {ref}."
    if cid == "C7":
        return f"{r.verdict.capitalize()}: {statistic(cid, r)}."
    return "—"


def overall(
    cid: str, verdict: str, table: pd.DataFrame, decided: list[str] | None = None, undecided: list[str] | None = None
) -> tuple[str, str]:
    """The claim's statistic and sentence across settings, naming the settings that decided and those that
    could not (settings where the claim is not judged by design are left out of both)."""
    if table.empty:
        return "—", "Inconclusive: no finished run to judge."
    decided, undecided = list(decided or []), list(undecided or [])
    applies = table["applies"] if "applies" in table else pd.Series(True, index=table.index)
    shown = table[applies.astype(bool)]
    if shown.empty:
        return "—", f"Not judged: {table['sentence'].iloc[0]}"
    if len(table) == 1:
        return table["statistic"].iloc[0], table["sentence"].iloc[0]
    statistic = "\n".join(f"{s}: {t}" for s, t in zip(shown["split"], shown["statistic"], strict=True))
    sentence_of = dict(zip(table["split"], table["sentence"], strict=True))
    verdict_of = dict(zip(table["split"], table["verdict"], strict=True))
    could_not = f" Could not judge in {len(undecided)}: {'; '.join(undecided)}." if undecided else ""
    if cid == "C5" and verdict != "supported":
        first = shown["split"].iloc[0]
        return statistic, (
            f"Not seen in the regimes tested ({len(shown)}: {'; '.join(shown['split'])}); a “can” claim is not "
            f"refuted by regimes that do not show it. In {first}: {sentence_of[first]}"
        )
    if cid == "C5":
        return statistic, (
            f"Supported: shown in {len(decided)} of {len(shown)} regimes ({'; '.join(decided)}); not seen in the "
            f"others. In {decided[0]}: {sentence_of[decided[0]]}"
        )
    if not decided:
        return statistic, f"Inconclusive in all {len(shown)} settings where it applies." + (
            f" In {shown['split'].iloc[0]}: {sentence_of[shown['split'].iloc[0]]}"
        )
    by: dict[str, list[str]] = {}
    for s in decided:
        by.setdefault(verdict_of[s], []).append(s)
    where = "; ".join(f"{v} in {', '.join(s)}" for v, s in by.items())
    examples = " ".join(f"In {s[0]}: {sentence_of[s[0]]}" for s in by.values())
    if verdict == "inconclusive":
        return statistic, (
            f"Inconclusive: only {len(decided)} of {len(shown)} settings where it applies reached a verdict "
            f"({where}), too few to speak for the claim.{could_not} {examples}"
        )
    lead = "Mixed — " if verdict == "mixed" else f"{verdict.capitalize()}: "
    return statistic, f"{lead}{where} (decided by {len(decided)} of {len(shown)} settings).{could_not} {examples}"
