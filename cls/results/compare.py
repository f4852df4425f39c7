"""`compare`: does changing one axis of a sweep change a metric, and how sure are we?

For each value of `axis` against a baseline value, trials are paired on every other axis of the sweep and on
the seed (trial "cbam=True, tau=0.5, seed=3" with "cbam=False, tau=0.5, seed=3"), so the spread that seeds
and the other axes cause cancels in each difference. Per comparison, over the n paired differences d:

- the mean difference and two 95% confidence intervals: the t interval of the paired t-test
  (`scipy.stats.ttest_rel(...).confidence_interval()`) and a percentile bootstrap of the mean of d
  (`scipy.stats.bootstrap`, resampling pairs, with a fixed seed so that a report is reproducible);
- the paired t-test p-value and the Wilcoxon signed-rank p-value (`scipy.stats.wilcoxon`, which assumes no
  normality), each adjusted by Holm's step-down method over all the comparisons shown, which keeps the
  chance of any false "significant" at alpha (Holm 1979);
- with fewer than MIN_PAIRS pairs, or differences without spread (a p-value would mean nothing), no p-value:
  instead the number of pairs a paired t-test would need to detect the observed mean difference with 80%
  power at alpha = 0.05, from the observed paired effect size d_z = mean(d) / sd(d) and the noncentral t
  distribution (Cohen 1988, §2.3), and the seeds that makes (each seed gives one pair per combination of
  the other axes).

Trials that cannot be paired (a seed that ran for one value and not the other) and trials that are not
complete (failed, still running, no value of the metric) are listed in the result, never silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .read import SEED_AXIS, configuration_columns

COMPLETE = ("finished", "stopped")
MIN_PAIRS = 5  # below this a p-value from 2-4 seeds is too fragile to print (Wilcoxon's smallest p is 0.0625)
ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
MAX_SEEDS = 10_000  # the power search stops here: "more than 10000 seeds" is the answer past it


@dataclass
class Comparison:
    """The result of `compare`: `table` has one row per (group of `by`, axis value) against the baseline;
    `unpaired` one row per complete trial without a partner; `incomplete` one row per trial not compared."""

    axis: str
    baseline: Any
    metric: str
    by: list[str]
    pair_on: list[str]
    table: pd.DataFrame
    unpaired: pd.DataFrame
    incomplete: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """The comparison as text: one verdict line per comparison, the numbers, and what was not paired."""
        axis = _name(self.axis)
        lines = [f"compare {self.metric} by {axis}, baseline {axis}={_show(self.baseline)}; pairs share "
                 f"{', '.join(map(_name, self.pair_on))}"]
        for row in self.table.itertuples(index=False):
            lines.append(f"  {row.verdict}")
            if row.n >= 2:
                p = "" if np.isnan(row.p_t) else (f"; paired t p={_p(row.p_t)} (Holm {_p(row.p_t_holm)}), "
                                                  f"Wilcoxon p={_p(row.p_wilcoxon)} (Holm {_p(row.p_wilcoxon_holm)})")
                lines.append(f"    n={row.n} pairs, mean diff {row.mean_diff:+.4f}, 95% CI t [{row.t_low:+.4f}, "
                             f"{row.t_high:+.4f}], bootstrap [{row.boot_low:+.4f}, {row.boot_high:+.4f}]{p}")
        for row in self.unpaired.itertuples(index=False):
            lines.append(f"  unpaired: {row.trial_id} ({row.label}) has no partner with {row.missing}")
        for row in self.incomplete.itertuples(index=False):
            lines.append(f"  not compared: {row.trial_id} ({row.label}): {row.reason}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def compare(trials: pd.DataFrame, axis: str, baseline: Any = None, metric: str = "final_eval_top1",
            by: Sequence[str] | None = None, seed_column: str | None = None) -> Comparison:
    """Compare each value of `axis` (a trials column: "model.cbam" or "axis.model.cbam") with `baseline`
    (default: False for a boolean axis, else the smallest value) on `metric` (a trials column, or an epoch
    metric such as "eval_top1", read as final_eval_top1), within each group of the `by` columns."""
    axis = _column(trials, axis, "axis")
    metric = _metric(trials, metric)
    by = [_column(trials, b, "--by") for b in (by or [])]
    seed = seed_column or (SEED_AXIS if SEED_AXIS in trials else "seed" if "seed" in trials else None)
    if seed is None:
        raise ValueError("the trials have no seed column (axis.seed or seed) to pair on")
    values = sorted(trials[axis].dropna().unique().tolist(), key=_order)
    if len(values) < 2:
        raise ValueError(f"{axis} has {len(values)} value(s) in these trials ({values}); a comparison needs two")
    baseline = _baseline(values, baseline, axis)
    pair_on = _pair_on(trials, axis, seed, by)
    keys = [*by, *pair_on]

    status = trials["status"] if "status" in trials else pd.Series("finished", index=trials.index)
    complete = status.isin(COMPLETE) & trials[metric].notna()
    label_columns = [axis, *keys]
    labels = _labels(trials, label_columns)
    incomplete = pd.DataFrame({
        "trial_id": trials.loc[~complete, "trial_id"], "label": labels[~complete],
        "reason": [f"status {s}" if s not in COMPLETE else f"no {metric}" for s in status[~complete]]})
    done = trials[complete]

    notes = []
    cell = done.groupby([*keys, axis], dropna=False)
    if (cell.size() > 1).any():
        notes.append(f"{int((cell.size() > 1).sum())} (configuration, seed) cells hold several trials; "
                     f"their {metric} is averaged")
    means = cell[metric].mean().reset_index()
    ids = cell["trial_id"].agg(lambda s: ",".join(sorted(s))).reset_index()
    means = means.merge(ids, on=[*keys, axis])

    rows, unpaired = [], []
    groups = means.groupby(by, dropna=False, sort=True) if by else [((), means)]
    for group, frame in groups:
        group = group if isinstance(group, tuple) else (group,)
        base = frame[frame[axis].map(lambda v: _same(v, baseline))].set_index(pair_on)
        for value in values:
            if _same(value, baseline):
                continue
            other = frame[frame[axis].map(lambda v, w=value: _same(v, w))].set_index(pair_on)
            both = base.index.intersection(other.index)
            for side, partner, missing in ((other, base, baseline), (base, other, value)):
                for key in side.index.difference(partner.index):
                    row = side.loc[[key]].iloc[0]
                    unpaired.append({**dict(zip(by, group)), "trial_id": row["trial_id"],
                                     "label": _label(label_columns, [row[axis], *group, *_tuple(key)]),
                                     "missing": f"{_name(axis)}={_show(missing)}"})
            a = other.loc[both, metric].to_numpy(float)
            b = base.loc[both, metric].to_numpy(float)
            stats_ = _statistics(a, b)
            # Each seed gives one pair per combination of the other axes: seeds = pairs / combinations.
            combos = max(1, len({_tuple(k)[:-1] for k in both}))
            need = stats_.pop("pairs_needed")
            rows.append({**dict(zip(by, group)), "value": value, "baseline": baseline, **stats_,
                         "pairs_needed": need, "seeds_needed": None if need is None else math.ceil(need / combos)})

    table = pd.DataFrame(rows)
    table["p_t_holm"] = holm(table["p_t"].to_numpy(float))
    table["p_wilcoxon_holm"] = holm(table["p_wilcoxon"].to_numpy(float))
    table["verdict"] = [_verdict(r, axis, metric, by) for r in table.to_dict("records")]
    unpaired = pd.DataFrame(unpaired, columns=[*by, "trial_id", "label", "missing"]).drop_duplicates()
    return Comparison(axis, baseline, metric, by, pair_on, table, unpaired.reset_index(drop=True),
                      incomplete.reset_index(drop=True), notes)


def compare_axes(trials: pd.DataFrame, metric: str = "final_eval_top1") -> dict[str, Comparison | str]:
    """`compare` for each axis of a sweep but the seed (axis.* columns with two or more values): the
    Comparison, or the reason there is none (a message). What `cls sweep` ends with and `cls report` shows."""
    axes = sorted(c for c in trials.columns if c.startswith("axis.") and c != SEED_AXIS and trials[c].nunique() > 1)
    out: dict[str, Comparison | str] = {}
    for axis in axes:
        try:
            out[axis] = compare(trials, axis, metric=metric)
        except ValueError as e:
            out[axis] = str(e)
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values of a family (NaN entries are not part of it and stay NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # monotone: never below an earlier step
        out[i] = running
    return out


def seeds_needed(effect: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The smallest number of pairs (seeds, when each seed gives one pair) with which a two-sided paired t-test at `alpha` detects a true paired
    effect size `effect` (mean / sd of the differences) with probability `power`; None past MAX_SEEDS."""
    from scipy import stats

    if not np.isfinite(effect) or effect == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        if paired_t_power(n, effect, alpha) >= power:
            return n
    return None


def paired_t_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """The power of a two-sided paired t-test with n pairs at `alpha` against a true effect size `effect`:
    P(|T| > t_crit) for T noncentral t with n - 1 degrees of freedom and noncentrality effect * sqrt(n)."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    shift = abs(effect) * math.sqrt(n)
    # The far tail (a significant result of the wrong sign) is below 1e-16 for large shifts, where scipy's
    # nct.cdf can return NaN: it is nothing, not unknown.
    return float(stats.nct.sf(crit, n - 1, shift) + np.nan_to_num(stats.nct.cdf(-crit, n - 1, shift)))


def _statistics(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    from scipy import stats

    d = a - b
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else np.nan, "sd_diff": float(d.std(ddof=1)) if n > 1 else np.nan,
           "t_low": np.nan, "t_high": np.nan, "boot_low": np.nan, "boot_high": np.nan,
           "p_t": np.nan, "p_wilcoxon": np.nan, "effect_size": np.nan, "pairs_needed": None}
    if n < 2 or out["sd_diff"] == 0:
        return out  # no spread to estimate: neither interval nor test means anything
    t = stats.ttest_rel(a, b)
    ci = t.confidence_interval(1 - ALPHA)
    boot = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=1 - ALPHA,
                           method="percentile", rng=np.random.default_rng(BOOTSTRAP_SEED))
    out.update(t_low=float(ci.low), t_high=float(ci.high), boot_low=float(boot.confidence_interval.low),
               boot_high=float(boot.confidence_interval.high), effect_size=out["mean_diff"] / out["sd_diff"])
    out["pairs_needed"] = seeds_needed(out["effect_size"])
    if n >= MIN_PAIRS:
        out["p_t"] = float(t.pvalue)
        out["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def _verdict(r: dict[str, Any], axis: str, metric: str, by: list[str]) -> str:
    where = "".join(f" [{_name(b)}={_show(r[b])}]" for b in by)
    head = f"{_name(axis)}={_show(r['value'])} vs {_show(r['baseline'])}{where}:"
    n, diff = r["n"], r["mean_diff"]
    if n == 0:
        return f"{head} no pairs (no seed ran with both values): nothing to compare"
    if n == 1 or np.isnan(r["sd_diff"]):
        return f"{head} {diff:+.4f} {metric} from 1 pair: at least 2 pairs are needed to see how much seeds vary"
    if r["sd_diff"] == 0:
        return f"{head} every one of the {n} pairs differs by exactly {diff:+.4f} {metric}: no spread, no test"
    need = r["seeds_needed"]  # None or NaN (a float column once another row has a number): past MAX_SEEDS
    pairs = r["pairs_needed"]
    need_text = (f"more than {MAX_SEEDS} pairs" if need is None or pd.isna(need) else f"about {int(need)} seeds"
                 + (f" ({int(pairs)} pairs)" if int(pairs) != int(need) else ""))
    ci = f"95% CI [{r['t_low']:+.4f}, {r['t_high']:+.4f}]"
    if np.isnan(r["p_t"]):
        return (f"{head} {diff:+.4f} {metric} ({ci}) from only {n} pairs: too few for a p-value; "
                f"{need_text} would be needed to detect a difference this size (80% power, alpha {ALPHA})")
    if r["p_t_holm"] < ALPHA:
        direction = "higher" if diff > 0 else "lower"
        return (f"{head} {metric} is {direction} by {abs(diff):.4f} ({ci}), significant after Holm's correction "
                f"(p={_p(r['p_t_holm'])}, {n} pairs)")
    return (f"{head} no significant difference: {diff:+.4f} {metric} ({ci}, Holm p={_p(r['p_t_holm'])}, {n} pairs); "
            f"{need_text} would be needed to detect a difference this size (80% power)")


def _column(trials: pd.DataFrame, name: str, what: str) -> str:
    name = name.removeprefix("axis.")
    for candidate in (f"axis.{name}", name):  # the axis column is what the sweep set; its config twin follows
        if candidate in trials:
            return candidate
    axes = sorted(c for c in trials.columns if c.startswith("axis."))
    raise ValueError(f"{what} {name!r} is not a column of the trials; the sweep's axes: {', '.join(axes) or 'none'}")


def _metric(trials: pd.DataFrame, metric: str) -> str:
    for candidate in (metric, f"final_{metric}"):
        if candidate in trials and pd.api.types.is_numeric_dtype(trials[candidate]):
            return candidate
    have = sorted(c for c in trials.columns if c.startswith(("final_", "best_")))
    raise ValueError(f"no numeric metric {metric!r} in the trials; metrics there: {', '.join(have) or 'none'}")


def _pair_on(trials: pd.DataFrame, axis: str, seed: str, by: list[str]) -> list[str]:
    """The sweep's other configuration columns and the seed; a column the compared axis determines (model.cbam
    under axis.model.cbam, model.backbone1 under a model.name comparison) is part of the axis, not a pair key."""
    bare = axis.removeprefix("axis.")
    columns = [c for c in configuration_columns(trials)
               if c not in (axis, bare, f"axis.{bare}", "sweep", seed, *by)]
    determined = [c for c in columns if not c.startswith("axis.")
                  and trials.groupby(axis, dropna=False)[c].nunique(dropna=False).max() <= 1]
    return [*(c for c in columns if c not in determined), seed]


def _baseline(values: list[Any], baseline: Any, axis: str) -> Any:
    if baseline is None:
        return False if any(isinstance(v, (bool, np.bool_)) for v in values) and False in values else values[0]
    for v in values:
        if _same(v, baseline) or str(v).lower() == str(baseline).lower():
            return v
        try:
            if not isinstance(v, (bool, np.bool_, str)) and float(v) == float(baseline):
                return v
        except (TypeError, ValueError):
            pass
    raise ValueError(f"--baseline {baseline!r} is not a value of {axis}; its values: "
                     f"{', '.join(map(_show, values))}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and bool(a) == bool(b)
    return a == b


def _order(v: Any) -> tuple:
    return (str(type(v)), v)


def _tuple(key: Any) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def _labels(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    return pd.Series([_label(columns, row) for row in df[columns].itertuples(index=False)], index=df.index)


def _label(columns: list[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{_name(c)}={_show(v)}" for c, v in zip(columns, values))


def _name(column: str) -> str:
    return column.removeprefix("axis.")


def _show(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return f"{float(v):g}"
    return str(v.item() if isinstance(v, np.generic) else v)


def _p(p: float) -> str:
    return "n/a" if np.isnan(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"
