"""`write_report`: one sweep of the results store as `report.md`, its own configurations aggregated over
seeds, the paired comparison (`cls.results.compare`) of each axis, and the seed papers' tables
(`cls.results.paper`) beside ours, with PNG plots: loss curves in the style of seed 000 Fig. 3 and one bar
chart (paper vs ours) per reproduced table. The same report as `report.html`: one self-contained file
(its plots inline as data: URIs, its style in the page, no script and no external URL) that opens from a
laptop's disk after an rsync, with no network. Every file is written atomically: a browser reloading
during a `--watch` rewrite sees the old report or the new one.

Only complete trials are aggregated: "finished" and "stopped" (ended early by a scheduler; its metrics
stand). Failed trials are listed, running ones counted.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import os
import re
import textwrap
import threading
from pathlib import Path, PurePath
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from cls.data.layout import write_atomic

from .compare import compare_axes
from .paper import TABLES, PaperTable
from .read import aggregate, configuration_columns, load

COMPLETE = ("finished", "stopped")
DEFAULT_METRIC = "best_eval_top1"
PATH_COLUMNS = ("data.root",)  # matched on the last path component (see paper.py)
LOSSES = (("train_loss", "-", "train"), ("eval_loss", "--", "eval"))  # seed 000 Fig. 3: training and validation loss


def write_report(root: str | os.PathLike, sweep: str, out_dir: str | os.PathLike, metric: str | None = None) -> Path:
    """Write report.md, report.html, loss_curves.png and one <table_id>.png per reproduced paper table into
    `out_dir`; return the path of report.md. `metric`: a trials column (default best_eval_top1); the paper
    tables are compared on its best_/final_ statistic of each table's metric."""
    trials = load(root, "trials", sweep=sweep)
    if trials.empty:
        known = sorted(p.name.partition("=")[2] for p in (Path(root) / "trials").glob("sweep=*"))
        raise ValueError(f"no trials of sweep {sweep!r} in the results store {str(root)!r}; "
                         f"sweeps there: {', '.join(known) or 'none'}")
    metric = _metric(trials, metric)
    epochs = load(root, "epochs", sweep=sweep)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    status = trials["status"].fillna("unknown") if "status" in trials else pd.Series("unknown", index=trials.index)
    configs = configuration_columns(trials)
    if configs == ["sweep"] and "experiment" in trials:
        configs = ["experiment"]  # a sweep without axes: its presets are its configurations
    trials = trials.assign(config=_labels(trials, configs))
    done = trials[status.isin(COMPLETE)]

    counts = ", ".join(f"{n} {s}" for s, n in status.value_counts().sort_index().items())
    lines = [f"# Sweep `{sweep}`", "",
             f"Results store `{root}`; report written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.", "",
             f"Trials: {len(trials)} ({counts}). Aggregated: the {len(done)} finished or stopped trials, "
             f"mean ± sample std over seeds, n = trials with a value.", ""]
    lines += _sweep_section(done, configs, metric)
    lines += _comparison_sections(trials, metric)
    failed = trials[status == "failed"]
    if len(failed):
        lines += ["## Failed trials (not aggregated)", ""]
        errors = failed["error"] if "error" in failed else pd.Series(None, index=failed.index, dtype=object)
        # The first line of the error (the sweep driver stores the whole message, traceback included).
        lines += [f"- `{t}`: {c}" + (f": {e.strip().splitlines()[0]}" if isinstance(e, str) and e.strip() else "")
                  for t, c, e in zip(failed["trial_id"], failed["config"], errors)] + [""]
    running = trials[status == "running"]
    lines += _running_section(running, epochs)
    # Running trials' curves too: a report rewritten by --watch shows a sweep's epochs as they land.
    if _plot_losses(epochs, pd.concat([done, running]), out / "loss_curves.png"):
        lines += ["## Loss curves", "", "Training (solid) and evaluation (dashed) loss per epoch, mean over seeds with "
                  "a ± std band (seed 000 Fig. 3), one panel per dataset; running trials included.", "",
                  "![loss curves](loss_curves.png)", ""]
    lines += _paper_sections(done, configs, metric, out)
    lines += _shared_config(trials)
    text = "\n".join(lines)
    path = out / "report.md"
    write_atomic(path, text.encode())
    write_atomic(out / "report.html", to_html(text, out, title=f"Sweep {sweep}").encode())
    return path


def watch(root: str | os.PathLike, sweep: str, out_dir: str | os.PathLike, metric: str | None = None,
          interval: float = 5.0, stop: threading.Event | None = None,
          on_write: Callable[[Path], None] | None = None) -> int:
    """Rewrite the report of `sweep` (`write_report`, atomically) each time the sweep's files in the store
    change (an epoch row or a trial row lands), checking every `interval` seconds, until `stop` is set (or
    forever). Before the sweep's first trial it waits. `on_write(report_md)` after each rewrite; returns the
    number of rewrites."""
    stop = stop or threading.Event()
    seen, written = None, 0
    while True:
        state = _fingerprint(root, sweep)
        if state != seen and state:
            try:
                path = write_report(root, sweep, out_dir, metric=metric)
            except ValueError:
                if len(load(root, "trials", sweep=sweep)):
                    raise  # e.g. a metric the sweep does not have: waiting would not change it
                path = None  # no trial row yet, only epoch files: look again
            if path is not None:
                seen, written = state, written + 1
                if on_write:
                    on_write(path)
        if stop.wait(interval):
            return written


def _fingerprint(root: str | os.PathLike, sweep: str) -> tuple:
    """What changes when a row of the sweep lands: each data file's name, size and mtime (writers replace
    files whole, so a new row is a new inode and mtime)."""
    from .store import TABLES, data_files, sweep_dir

    state = []
    for table in TABLES:
        for f in data_files(sweep_dir(root, table, sweep)):
            try:
                st = f.stat()
            except FileNotFoundError:  # compacted away between listing and stat
                continue
            state.append((str(f), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(state)


def _running_section(running: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The running trials and their latest epoch: what a report kept open during a sweep is for."""
    if running.empty:
        return []
    shown = [m for m in ("eval_top1", "eval_loss", "train_loss") if m in epochs]
    rows = []
    for trial, config in zip(running["trial_id"], running["config"]):
        own = epochs[epochs["trial_id"] == trial].sort_values("epoch") if "epoch" in epochs else epochs.iloc[0:0]
        latest = [f"{own[m].iloc[-1]:.4f}" if len(own) else "" for m in shown]
        rows.append([f"`{trial}`", config, str(len(own)), *latest])
    header = ["trial", "configuration", "epochs recorded", *(f"latest {m}" for m in shown)]
    return ["## Running trials", "", *_markdown(header, rows), ""]


def to_html(markdown: str, images: Path, title: str) -> str:
    """`markdown` as one self-contained HTML page: each image it references (a file in `images`) inline as a
    data: URI, raw HTML in the text (an error message with "<") escaped, links and images to anything but
    those files removed, so that opening the page never makes a request."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def inline(match: re.Match) -> str:
        name = html.unescape(match.group(1))
        path = images / name
        if "/" in name or not name.endswith(".png") or not path.is_file():
            return 'src=""'
        return f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"'

    body = re.sub(r'src="([^"]*)"', inline, body)
    body = re.sub(r'<a href="[^"]*">', "<a>", body)  # the report's text links nowhere; a URL in it stays text
    return _PAGE.format(title=html.escape(title), body=body)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #1a1a1a;
       background: #fff; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #eef2f7; }}
tr:nth-child(even) td {{ background: #f8f9fb; }}
code {{ background: #f1f1f1; padding: 0 0.2rem; }}
img {{ max-width: 100%; }}
h1 {{ border-bottom: 2px solid #36c; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""


def _comparison_sections(trials: pd.DataFrame, metric: str) -> list[str]:
    """`cls compare` of each axis of the sweep (but the seed), paired on the others and the seed."""
    comparisons = compare_axes(trials, metric)
    if not comparisons:
        return []
    lines = ["## Comparisons", "",
             f"Each value of an axis against its baseline on `{metric}`, trials paired on the other axes and the "
             "seed (`cls compare`): mean difference, 95% CIs (t interval; percentile bootstrap of the pairs), "
             "paired t-test and Wilcoxon signed-rank p-values with Holm's correction over the axis's comparisons; "
             "with fewer than 5 pairs, the seeds a paired t-test would need instead of a p-value.", ""]
    for axis, result in comparisons.items():
        lines += [f"### `{axis.removeprefix('axis.')}`", ""]
        if isinstance(result, str):
            lines += [f"Not compared: {result}.", ""]
            continue
        lines += [f"- {v}" for v in result.table["verdict"]] + [""]
        header = ["value", "baseline", "pairs", "mean diff", "95% CI (t)", "95% CI (bootstrap)",
                  "p t-test (Holm)", "p Wilcoxon (Holm)", "seeds needed"]
        rows = [[str(r.value), str(r.baseline), str(r.n), _num(r.mean_diff), _interval(r.t_low, r.t_high),
                 _interval(r.boot_low, r.boot_high), _pvalues(r.p_t, r.p_t_holm), _pvalues(r.p_wilcoxon, r.p_wilcoxon_holm),
                 "" if r.seeds_needed is None or pd.isna(r.seeds_needed) else str(int(r.seeds_needed))]
                for r in result.table.itertuples(index=False)]
        lines += _markdown(header, rows) + [""]
        lines += [f"- unpaired: `{r.trial_id}` ({r.label}) has no partner with {r.missing}"
                  for r in result.unpaired.itertuples(index=False)]
        lines += [f"- not compared: `{r.trial_id}` ({r.label}): {r.reason}"
                  for r in result.incomplete.itertuples(index=False)]
        lines += [f"- note: {n}" for n in result.notes]
        lines += [""] if len(result.unpaired) or len(result.incomplete) or result.notes else []
    return lines


def _shared_config(trials: pd.DataFrame) -> list[str]:
    """The config every trial of the sweep shares (what the configurations' table does not show)."""
    columns = [c for c in trials.columns if "." in c and not c.startswith(("axis.", "final_", "best_"))
               and trials[c].nunique(dropna=False) == 1]
    if not columns:
        return []
    first = trials.iloc[0]
    return ["## Configuration shared by every trial", "",
            *_markdown(["key", "value"], [[f"`{c}`", str(first[c])] for c in sorted(columns)]), ""]


def _num(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.4f}"


def _interval(low: float, high: float) -> str:
    return "" if pd.isna(low) else f"[{low:+.4f}, {high:+.4f}]"


def _pvalues(p: float, holm: float) -> str:
    return "" if pd.isna(p) else f"{p:.2g} ({holm:.2g})"


def select(trials: pd.DataFrame, match: Mapping[str, Any]) -> pd.DataFrame:
    """The rows of `trials` that a paper row's `match` selects (the rule is in paper.py's docstring)."""
    keep = pd.Series(True, index=trials.index)
    for column, want in match.items():
        if column not in trials:
            return trials.iloc[0:0]
        keep &= trials[column].map(lambda v, c=column, w=want: _equal(c, v, w)).astype(bool)
    return trials[keep]


def _equal(column: str, value: Any, want: Any) -> bool:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    if isinstance(want, bool):
        return isinstance(value, (bool, np.bool_)) and bool(value) == want
    if column in PATH_COLUMNS:
        return PurePath(str(value)).name == want
    return value == want


def _metric(trials: pd.DataFrame, metric: str | None) -> str:
    available = sorted(c for c in trials.columns if c.startswith(("best_", "final_")))
    if metric is None:
        metric = DEFAULT_METRIC if DEFAULT_METRIC in trials or not available else \
            next((c for c in available if c.startswith("best_")), available[0])
    if metric == DEFAULT_METRIC and not available:
        return metric  # only running trials, none with a summary yet: the report shows their epochs so far
    if metric not in trials or not pd.api.types.is_numeric_dtype(trials[metric]):
        raise ValueError(f"the trials of this sweep have no numeric column {metric!r}; "
                         f"metrics there: {', '.join(available) or 'none'}")
    return metric


def _labels(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One readable name per configuration: "model.name=dnffm, optim.lr=0.1"."""
    if not columns:
        return pd.Series("all trials", index=df.index, dtype=object)
    return pd.Series([", ".join(f"{c.removeprefix('axis.')}={v}" for c, v in zip(columns, row))
                      for row in df[columns].itertuples(index=False)], index=df.index, dtype=object)


def _sweep_section(done: pd.DataFrame, configs: list[str], metric: str) -> list[str]:
    lines = [f"## Configurations by `{metric}`", ""]
    if done.empty:
        return lines + ["No finished or stopped trials yet.", ""]
    by = configs or ["config"]
    agg = aggregate(done, by, metric).sort_values("mean", ascending="loss" in metric, na_position="last")
    header = [c.removeprefix("axis.") for c in by] + [f"{metric} (mean ± std)", "n"]
    rows = [[*(str(v) for v in r[:len(by)]), _pm(r[-3], r[-2], digits=4), str(int(r[-1]))]
            for r in agg.itertuples(index=False)]
    return lines + _markdown(header, rows) + [""]


def _paper_sections(done: pd.DataFrame, configs: list[str], metric: str, out: Path) -> list[str]:
    statistic = "final" if metric.startswith("final_") else "best"  # the papers do not say; follow --metric
    lines, missing = ["## Against the papers", ""], []
    for table in TABLES:
        column = f"{statistic}_{table.metric}"
        rows = _compare(table, done, configs, column)
        if not any(r["n"] is not None for r in rows):
            missing.append(f"{table.id} ({table.source})")
            continue
        _plot_table(table, rows, out / f"{table.id}.png")
        lines += [f"### {table.title}", "", f"Source: {table.source}. Ours: `{column}` x {table.scale:g} "
                  f"({table.unit}); difference = ours - paper.", ""]
        lines += _markdown(
            ["row", f"paper ({table.unit})", "ours (mean ± std, n)", "difference", "run with `cls train`"],
            [[r["label"], f"{r['paper']:.{table.decimals}f}",
              "not run" if r["n"] is None else f"{_pm(r['mean'], r['std'])} (n={r['n']})",
              "" if r["n"] is None or np.isnan(r["mean"]) else f"{r['mean'] - r['paper']:+.2f}",
              " ".join(r["run"])] for r in rows])
        lines += [""] + [f"Note: {n}\n" for n in table.notes] + [f"![{table.id}]({table.id}.png)", ""]
    if missing:
        lines += [f"Not reproduced by this sweep: {'; '.join(missing)}.", ""]
    return lines


def _compare(table: PaperTable, done: pd.DataFrame, configs: list[str], column: str) -> list[dict[str, Any]]:
    """One entry per paper row, or per configuration under it when the sweep ran several that match it
    (e.g. an lr scan of DNFFM on CIFAR10): pooling them would describe no configuration. n is None: not run."""
    rows = []
    for row in table.rows:
        base = {"label": row.label, "paper": row.value, "run": row.run, "mean": np.nan, "std": np.nan, "n": None}
        chosen = select(done, row.match)
        if chosen.empty:
            rows.append(base)
            continue
        values = chosen.assign(value=chosen[column] * table.scale if column in chosen else np.nan)
        varying = [c for c in configs if values[c].nunique(dropna=False) > 1]
        values = values.assign(sub=_labels(values, varying))
        for r in aggregate(values, ["sub"], "value").itertuples(index=False):
            label = f"{row.label} ({r.sub})" if varying else row.label
            rows.append({**base, "label": label, "mean": r.mean, "std": r.std, "n": int(r.count)})
    return rows


def _pm(mean: float, std: float, digits: int = 2) -> str:
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - a "|" inside a value would split the cell
    return [f"| {' | '.join(map(cell, header))} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(map(cell, r))} |" for r in rows)]


def _plot_losses(epochs: pd.DataFrame, done: pd.DataFrame, path: Path) -> bool:
    """Training and evaluation loss against epoch, one line per configuration (mean over seeds, ± std band
    with more than one seed), one panel per dataset. False when there is nothing to plot."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state; PNGs render through Agg

    losses = [spec for spec in LOSSES if spec[0] in epochs]
    if not losses or done.empty or epochs.empty:
        return False
    info = done[["trial_id", "config"]].assign(dataset=done["data.name"] if "data.name" in done else "")
    data = epochs.merge(info, on="trial_id")
    if data.empty:
        return False
    datasets = sorted(data["dataset"].fillna("").unique())
    fig = Figure(figsize=(5.5 * len(datasets), 4.2), layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        subset = data[data["dataset"].fillna("") == dataset]
        for i, (config, trials) in enumerate(subset.groupby("config", sort=True)):
            for column, style, name in losses:
                curve = trials.groupby("epoch")[column].agg(["mean", "std", "count"])
                ax.plot(curve.index, curve["mean"], style, color=f"C{i % 10}", label=f"{config} ({name})")
                if curve["count"].max() > 1:
                    ax.fill_between(curve.index, curve["mean"] - curve["std"], curve["mean"] + curve["std"],
                                    color=f"C{i % 10}", alpha=0.2, linewidth=0)
        ax.set(title=dataset or "loss", xlabel="epoch", ylabel="loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="x-small")
    _save(fig, path)
    return True


def _plot_table(table: PaperTable, rows: list[dict[str, Any]], path: Path) -> None:
    """Paper vs ours, one pair of bars per row; ours with a ± std error bar; rows not run have no bar."""
    from matplotlib.figure import Figure

    x = np.arange(len(rows))
    ours = np.array([r["mean"] for r in rows], dtype=float)
    fig = Figure(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(x - 0.2, [r["paper"] for r in rows], 0.4, label="paper")
    ran = ~np.isnan(ours)
    std = np.nan_to_num(np.array([r["std"] for r in rows], dtype=float))
    ax.bar(x[ran] + 0.2, ours[ran], 0.4, yerr=std[ran], capsize=3, label="ours")
    values = np.concatenate([[r["paper"] for r in rows], ours[ran]])
    # Accuracies of one table lie within a few points: bars from zero would hide the differences.
    ax.set_ylim(max(0.0, np.floor(values.min() / 5) * 5 - 5), values.max() + 2)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_title(textwrap.fill(table.title, 80), fontsize="medium")
    ax.set_ylabel(f"{table.metric} ({table.unit})")
    ax.legend()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_atomic(path, buffer.getvalue())
