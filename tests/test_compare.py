"""`cls compare` (cls.results.compare) over a real results store with known values: the differences, intervals
and p-values are those scipy computes directly on the same pairs; unpaired and incomplete trials are reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cls.cli import SUBCOMMANDS, main
from cls.results import ResultsWriter, compare, load
from cls.results.compare import holm, paired_t_power, seeds_needed
from cls.results.schema import config_types

TYPES = config_types()

SWEEP = "cbam-ablation"
SEEDS = range(6)
# final top-1 per (cbam, tau, seed): cbam=True adds a clear +0.02 at tau 0.5 and a noisy +0.002 at tau 1.0.
NOISE = np.random.default_rng(7).normal(0.0, 0.004, size=(2, 2, len(SEEDS)))


def top1(cbam: bool, tau: float, seed: int) -> float:
    gain = (0.02 if tau == 0.5 else 0.002) if cbam else 0.0
    return round(0.9 + 0.003 * seed + gain + NOISE[int(cbam), int(tau == 1.0), seed], 6)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for cbam in (True, False):
        for tau in (0.5, 1.0):
            for seed in SEEDS:
                trial = f"c{int(cbam)}-t{tau}-s{seed}"
                w = ResultsWriter(root, SWEEP, trial)
                value = top1(cbam, tau, seed)
                w.write_epoch(0, {"eval_top1": value})
                # seed 5 of cbam=False, tau=1.0 failed; its partner (cbam=True, tau=1.0, seed 5) is unpaired.
                status = "failed" if (not cbam and tau == 1.0 and seed == 5) else "finished"
                w.write_trial({"model.name": "dnffm", "model.cbam": cbam, "model.tau": tau, "seed": seed,
                               "axis.model.cbam": cbam, "axis.model.tau": tau, "axis.seed": seed,
                               "status": status, "final_eval_top1": value, "best_eval_top1": value},
                              config_types=TYPES)  # as a sweep's TrialRecord writes it: axes typed as their keys
    return root


def pairs(tau_values, seeds, tau_seed_skip=((1.0, 5),)):
    a = [top1(True, t, s) for t in tau_values for s in seeds if (t, s) not in tau_seed_skip]
    b = [top1(False, t, s) for t in tau_values for s in seeds if (t, s) not in tau_seed_skip]
    return np.array(a), np.array(b)


def test_pooled_comparison_is_what_scipy_computes_on_the_same_pairs(store):
    result = compare(load(store, "trials", sweep=SWEEP), "model.cbam")
    assert result.axis == "axis.model.cbam" and result.baseline is False
    assert result.pair_on == ["axis.model.tau", "axis.seed"]
    (row,) = result.table.to_dict("records")
    a, b = pairs((0.5, 1.0), SEEDS)
    assert row["n"] == 11 == len(a)
    assert row["mean_diff"] == pytest.approx((a - b).mean(), abs=1e-12)
    t = stats.ttest_rel(a, b)
    ci = t.confidence_interval(0.95)
    assert (row["t_low"], row["t_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert row["p_t"] == pytest.approx(t.pvalue, rel=1e-12)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    boot = stats.bootstrap((a - b,), np.mean, n_resamples=9999, method="percentile",
                           rng=np.random.default_rng(0)).confidence_interval
    assert (row["boot_low"], row["boot_high"]) == pytest.approx((boot.low, boot.high), abs=1e-12)
    assert row["p_t_holm"] == row["p_t"]  # a family of one
    # The failed trial and its orphaned partner are reported, by trial id.
    assert result.unpaired[["trial_id", "missing"]].values.tolist() == [["c1-t1.0-s5", "model.cbam=False"]]
    assert result.incomplete[["trial_id", "reason"]].values.tolist() == [["c0-t1.0-s5", "status failed"]]
    text = result.format()
    assert "c1-t1.0-s5" in text and "unpaired" in text and "c0-t1.0-s5" in text and "status failed" in text


def test_by_groups_get_holm_over_the_comparisons_shown(store):
    result = compare(load(store, "trials", sweep=SWEEP), "model.cbam", by=["model.tau"])
    table = result.table.set_index("axis.model.tau")
    assert result.pair_on == ["axis.seed"]
    raw = {}
    for tau in (0.5, 1.0):
        a, b = pairs((tau,), SEEDS)
        assert table.loc[tau, "n"] == len(a)
        raw[tau] = stats.ttest_rel(a, b).pvalue
        assert table.loc[tau, "p_t"] == pytest.approx(raw[tau], rel=1e-12)
    low, high = sorted(raw, key=raw.get)
    assert table.loc[low, "p_t_holm"] == pytest.approx(2 * raw[low])  # Holm: smallest x m, then x (m-1), monotone
    assert table.loc[high, "p_t_holm"] == pytest.approx(max(2 * raw[low], raw[high]))
    verdict = table.loc[0.5, "verdict"]
    assert verdict.startswith("model.cbam=True vs False [model.tau=0.5]: final_eval_top1 is higher by")
    assert "significant after Holm" in verdict
    # tau=1.0: 5 pairs and a tiny gain, not significant: the verdict says so, with the seeds needed.
    assert "no significant difference" in table.loc[1.0, "verdict"] and "seeds would be needed" in table.loc[1.0, "verdict"]


def test_too_few_pairs_give_the_seeds_needed_instead_of_a_p_value(store):
    trials = load(store, "trials", sweep=SWEEP)
    result = compare(trials[trials["axis.seed"] < 3], "model.cbam", by=["model.tau"])
    row = result.table.set_index("axis.model.tau").loc[0.5]
    assert row["n"] == 3 and np.isnan(row["p_t"]) and np.isnan(row["p_wilcoxon"]) and np.isnan(row["p_t_holm"])
    a, b = pairs((0.5,), range(3))
    d = a - b
    effect = d.mean() / d.std(ddof=1)
    need = seeds_needed(effect)
    assert row["seeds_needed"] == row["pairs_needed"] == need  # one pair per seed: pairs on the seed only
    # The power of a paired t-test at n = need reaches 80%, at need - 1 it does not (noncentral t, scipy).
    def power(n):
        crit = stats.t.ppf(0.975, n - 1)
        return stats.nct.sf(crit, n - 1, abs(effect) * np.sqrt(n))  # the wrong-sign tail is negligible here
    assert need == 3 and power(need) >= 0.8 > power(need - 1)
    assert paired_t_power(need, effect) == pytest.approx(power(need))
    # A small effect needs many seeds: d_z = 0.5 needs 34 pairs (as G*Power gives for a two-sided paired t-test).
    assert seeds_needed(0.5) == 34
    assert "too few for a p-value" in row["verdict"] and f"about {need} seeds" in row["verdict"]
    assert "p=" not in row["verdict"]
    # Pooled over tau, each seed gives two pairs: half as many seeds as pairs.
    pooled = compare(trials[trials["axis.seed"] < 2], "model.cbam").table.iloc[0]
    assert pooled["n"] == 4 and pooled["seeds_needed"] == -(-pooled["pairs_needed"] // 2)
    assert f"about {pooled['seeds_needed']} seeds ({pooled['pairs_needed']} pairs)" in pooled["verdict"]


def test_holm_matches_the_textbook_step_down():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m=4): 0.04, 0.09, max(0.09, 0.08)=0.09, max(0.09, 0.5)=0.5
    np.testing.assert_allclose(holm(p), [0.04, 0.09, np.nan, 0.09, 0.5])


def test_bad_axis_baseline_and_metric_name_the_choices(store):
    trials = load(store, "trials", sweep=SWEEP)
    with pytest.raises(ValueError, match=r"'model.cbm'.*axis.model.cbam, axis.model.tau, axis.seed"):
        compare(trials, "model.cbm")
    with pytest.raises(ValueError, match=r"--baseline '0.7' is not a value of axis.model.tau; its values: 0.5, 1"):
        compare(trials, "model.tau", baseline="0.7")
    with pytest.raises(ValueError, match="metrics there: best_eval_top1, final_eval_top1"):
        compare(trials, "model.cbam", metric="eval_top5")
    # --baseline as the command line gives it: a string, matched to the column's value.
    assert compare(trials, "model.tau", baseline="1.0").baseline == 1.0
    assert compare(trials, "model.cbam", baseline="true").table["value"].tolist() == [False]


def test_cli_compare_prints_the_verdict(store, monkeypatch, capsys):
    monkeypatch.setitem(SUBCOMMANDS, "compare", "cls.cli.compare")
    assert main(["compare", SWEEP, "--root", str(store), "--axis", "model.cbam", "--metric", "eval_top1",
                 "--by", "model.tau"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compare final_eval_top1 by model.cbam, baseline model.cbam=False; pairs share seed\n")
    assert "model.cbam=True vs False [model.tau=0.5]: final_eval_top1 is higher by" in out
    assert "unpaired: c1-t1.0-s5" in out
    assert main(["compare", "nope", "--root", str(store), "--axis", "model.cbam"]) == 2
    assert "cls compare: error: no trials of sweep 'nope'" in capsys.readouterr().err


def test_cls_sweep_ends_with_the_verdict_of_each_axis_and_the_pandas_line(tmp_path, monkeypatch, capsys):
    """The end of `cls sweep` over a store its trials wrote (the Ray part replaced: tests/test_sweep_ray.py
    runs the real one): the summary, the compare verdict of each axis, the pandas line, in that order."""
    from cls.sweep import driver
    from cls.sweep.driver import SweepOutcome

    root = tmp_path / "results"
    seeds = [0, 1, 2, 3, 4]
    sweep_file = tmp_path / "ablation.yaml"
    sweep_file.write_text(f"experiment: dnffm_digits\naxes:\n  model.cbam: {{grid: [true, false]}}\n"
                          f"  seed: {{grid: {seeds}}}\nmetric: eval_top1\nmode: max\n")

    def fake_run(sweep, trials, out=None, **options):
        for t in trials:
            cbam, seed = t.axes["model.cbam"], t.axes["seed"]
            value = 0.95 + 0.002 * seed + (0.02 if cbam else 0.0) + 0.001 * (seed % 2) * cbam
            ResultsWriter(root, sweep.name, t.trial_id).write_trial(
                {"model.cbam": cbam, "seed": seed, "axis.model.cbam": cbam, "axis.seed": seed,
                 "status": "finished", "final_eval_top1": value, "best_eval_top1": value}, config_types=TYPES)
        return SweepOutcome(len(trials), 0, {t.trial_id: "finished" for t in trials}, False)

    monkeypatch.setattr(driver, "run_sweep", fake_run)
    monkeypatch.setitem(SUBCOMMANDS, "sweep", "cls.cli.sweep")
    assert main(["sweep", str(sweep_file), "--results", str(root)]) == 0
    out = capsys.readouterr().out
    summary, verdict, pandas_line = (out.index(s) for s in ("final eval_top1", "compare final_eval_top1 by model.cbam",
                                                            "Read it with pandas:"))
    assert summary < verdict < pandas_line
    a = np.array([0.95 + 0.002 * s + 0.02 + 0.001 * (s % 2) for s in seeds])
    b = np.array([0.95 + 0.002 * s for s in seeds])
    p = stats.ttest_rel(a, b).pvalue
    assert (f"model.cbam=True vs False: final_eval_top1 is higher by {(a - b).mean():.4f}" in out
            and f"(p={p:.2g}, 5 pairs)" in out), out
