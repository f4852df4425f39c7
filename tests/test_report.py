"""`cls report` (cls.results.report) over a small real results store, and the paper tables it compares with
(cls.results.paper): transcribed numbers, and match columns that the presets' resolved configs really have."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cls.cli import SUBCOMMANDS, main
from cls.results import ResultsWriter, flatten_config, summarize
from cls.results.paper import TABLES, paper_table
from cls.results.report import select, write_report
from cls.train.config import compose_config, to_container

SWEEP = "paper-check"
# (trial_id, preset, seed, status, top-1 of the last epoch): two seeds of a baseline and of DNFFM on CIFAR10,
# one DNFFM seed on SVHN (a second dataset, n=1), and a failed DNFFM trial whose metric must not count.
TRIALS = [
    ("r50-s0", "baseline_cifar10", 0, "finished", 0.951),
    ("r50-s1", "baseline_cifar10", 1, "finished", 0.957),
    ("dn-s0", "dnffm_cifar10", 0, "finished", 0.970),
    ("dn-s1", "dnffm_cifar10", 1, "stopped", 0.979),
    ("dn-s2", "dnffm_cifar10", 2, "failed", 0.100),
    ("dnsvhn-s0", "dnffm_svhn", 0, "finished", 0.982),
]
EPOCHS = 3


@functools.cache
def resolved(overrides: tuple[str, ...]) -> dict:
    return flatten_config(to_container(compose_config(list(overrides))))


def epoch_metrics(seed: int, top1: float, epoch: int) -> dict[str, float]:
    # Accuracy rises to `top1` at the last epoch, so best = final = top1; losses fall, differ per trial.
    return {"train_loss": 2.0 / (epoch + 1) + 0.1 * seed - top1, "eval_loss": 2.5 / (epoch + 1) + 0.05 * seed - top1,
            "eval_top1": top1 - 0.01 * (EPOCHS - 1 - epoch), "train_top1": top1, "lr": 0.1}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    for trial_id, preset, seed, status, top1 in TRIALS:
        w = ResultsWriter(root, SWEEP, trial_id)
        rows = [{"epoch": e, **epoch_metrics(seed, top1, e)} for e in range(EPOCHS)]
        for row in rows:
            w.write_epoch(row["epoch"], row)
        error = "RuntimeError: CUDA out of memory\nTraceback (most recent call last): ..." if status == "failed" \
            else None
        w.write_trial({**resolved((f"experiment={preset}", f"seed={seed}")), **summarize(rows), "experiment": preset,
                       "axis.experiment": preset, "axis.seed": seed, "status": status, "error": error})
    ResultsWriter(root, "other-sweep", "t0").write_trial({"status": "finished", "best_train_loss": 1.0})
    return root


@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> Path:
    return write_report(store, SWEEP, tmp_path_factory.mktemp("report"))


def line_of(text: str, label: str) -> str:
    """The markdown table line whose first cell is `label`."""
    found = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    assert len(found) == 1, (label, found)
    return found[0]


def section(text: str, title: str) -> str:
    start = text.index(f"### {title}")
    end = text.find("\n### ", start + 1)
    return text[start:end if end >= 0 else None]


def expected(preset: str, scale: float = 1.0) -> dict[str, float]:
    """mean, sample std and count of the top-1 of the fixture's complete (not failed) trials of `preset`."""
    values = pd.Series([top1 * scale for _, p, _, status, top1 in TRIALS if p == preset and status != "failed"])
    return {"mean": values.mean(), "std": values.std(), "count": len(values)}


def test_report_sets_ours_beside_the_papers_numbers(report):
    text = report.read_text()
    assert report.name == "report.md" and f"# Sweep `{SWEEP}`" in text
    assert "6 (1 failed, 4 finished, 1 stopped)" in text
    table1 = paper_table("seed000_table1")
    t1 = section(text, table1.title)
    for label, preset in [("ResNet50", "baseline_cifar10"), ("Ours (DNFFM)", "dnffm_cifar10")]:
        paper = next(r.value for r in table1.rows if r.label == label)
        want = expected(preset, table1.scale)
        cells = [c.strip() for c in line_of(t1, label).strip("|").split("|")]
        assert cells[1] == f"{paper:.1f}"
        assert cells[2] == f"{want['mean']:.2f} ± {want['std']:.2f} (n={want['count']})"
        assert cells[3] == f"{want['mean'] - paper:+.2f}"
    # Rows the sweep did not run still show the paper's value, and how to run them.
    vgg = line_of(t1, "Vgg16")
    assert "| not run |" in vgg and "experiment=baseline_cifar10 model=vgg16" in vgg
    # One seed on SVHN: a mean without a std.
    svhn = paper_table("seed000_table3")
    want = expected("dnffm_svhn", svhn.scale)
    assert f"| {want['mean']:.2f} (n=1) |" in line_of(section(text, svhn.title), "Ours (DNFFM)")
    # Tables no trial matches are named once, not drawn.
    not_reproduced = next(line for line in text.splitlines() if line.startswith("Not reproduced by this sweep"))
    for table in TABLES:
        assert (table.id in not_reproduced) == (table.id not in ("seed000_table1", "seed000_table3"))


def test_failed_trials_are_listed_not_aggregated(report):
    text = report.read_text()
    failed = text[text.index("## Failed trials"):].split("\n## ")[0]
    assert "- `dn-s2`: experiment=dnffm_cifar10: RuntimeError: CUDA out of memory\n" in failed
    assert "`dn-s0`" not in failed and "Traceback" not in failed
    want = expected("dnffm_cifar10")
    assert f"| dnffm_cifar10 | {want['mean']:.4f} ± {want['std']:.4f} | 2 |" in text


def test_sweep_table_is_sorted_by_the_metric(report):
    text = report.read_text()
    means = {p: expected(p)["mean"] for p in ("baseline_cifar10", "dnffm_cifar10", "dnffm_svhn")}
    positions = {p: text.index(f"| {p} | {m:.4f}") for p, m in means.items()}
    assert sorted(positions, key=positions.get) == sorted(means, key=means.get, reverse=True)


def test_plots_are_png_files_referenced_from_the_report(report):
    text = report.read_text()
    for name in ("loss_curves.png", "seed000_table1.png", "seed000_table3.png"):
        path = report.parent / name
        assert f"]({name})" in text and path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()
    assert not (report.parent / "seed000_table2.png").exists()


def test_unknown_sweep_names_the_store_and_its_sweeps(store, tmp_path):
    with pytest.raises(ValueError, match=rf"'nope'.*{re.escape(str(store))}.*other-sweep, {SWEEP}"):
        write_report(store, "nope", tmp_path)
    with pytest.raises(ValueError, match="sweeps there: none"):
        write_report(tmp_path / "empty", SWEEP, tmp_path)


def test_missing_metric_lists_the_available_ones(store, tmp_path):
    with pytest.raises(ValueError, match=r"'best_eval_top9'.*best_eval_loss, best_eval_top1"):
        write_report(store, SWEEP, tmp_path, metric="best_eval_top9")
    # A sweep without eval metrics falls back to one it has.
    text = write_report(store, "other-sweep", tmp_path / "other").read_text()
    assert "## Configurations by `best_train_loss`" in text and "Not reproduced by this sweep" in text


def test_cli_report_prints_the_report_path(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(SUBCOMMANDS, "report", "cls.cli.report")
    monkeypatch.setenv("CLS_RESULTS", str(store))
    monkeypatch.chdir(tmp_path)
    assert main(["report", SWEEP, "--metric", "final_eval_top1"]) == 0
    md, page = map(Path, capsys.readouterr().out.split())
    assert md == Path("reports") / SWEEP / "report.md" and "by `final_eval_top1`" in md.read_text()
    assert page == md.with_name("report.html") and "by <code>final_eval_top1</code>" in page.read_text()
    assert main(["report", "nope", "--root", str(store), "--out", str(tmp_path / "x")]) == 2
    assert "cls report: error: no trials of sweep 'nope'" in capsys.readouterr().err
    assert main(["report", SWEEP, "--watch", "--interval", "0"]) == 2
    assert "--interval must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_several_configurations_under_one_paper_row_are_not_pooled(tmp_path):
    base = resolved(("experiment=dnffm_cifar10",))
    for i, (lr, top1) in enumerate([(0.1, 0.97), (0.1, 0.98), (0.05, 0.90)]):
        w = ResultsWriter(tmp_path, "lr-scan", f"t{i}")
        w.write_trial({**base, "optim.lr": lr, "axis.optim.lr": lr, "axis.seed": i, "status": "finished",
                       "best_eval_top1": top1})
    t1 = section(write_report(tmp_path, "lr-scan", tmp_path / "out").read_text(), paper_table("seed000_table1").title)
    assert "| 97.50 ± 0.71 (n=2) |" in line_of(t1, "Ours (DNFFM) (optim.lr=0.1)")
    assert "| 90.00 (n=1) |" in line_of(t1, "Ours (DNFFM) (optim.lr=0.05)")


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.id)
def test_paper_rows_select_the_config_their_preset_resolves_to(table):
    configs = [resolved(row.run) for row in table.rows]
    for row, cfg in zip(table.rows, configs):
        missing = [k for k in row.match if k not in cfg and k != "experiment" and not k.startswith("axis.")]
        assert not missing, f"{table.id} {row.label!r}: {missing} are not config keys"
        # The row's own preset matches it and no other row of the table: the rows tell configurations apart.
        chosen = [other.label for other in table.rows if len(select(pd.DataFrame([cfg]), other.match))]
        assert chosen == [row.label], (table.id, row.label, chosen)


def test_matching_reads_data_roots_by_their_last_component():
    trials = pd.DataFrame({"data.root": ["/scratch/u/cats_vs_dogs-style/", "cats_vs_dogs", None],
                           "model.cbam": [True, 1.0, None]})
    assert select(trials, {"data.root": "cats_vs_dogs-style"}).index.tolist() == [0]
    assert select(trials, {"model.cbam": True}).index.tolist() == [0]
    assert select(trials, {"model.ma": True}).empty


def test_transcribed_numbers():
    dnffm = {t.id: next(r.value for r in t.rows if r.label == "Ours (DNFFM)")
             for t in TABLES if t.id.startswith("seed000")}
    assert dnffm == {"seed000_table1": 97.6, "seed000_table2": 85.7, "seed000_table3": 98.1}  # seed 000 abstract
    # §4.1-4.3: DNFFM gains over ResNet50 and DenseNet121, which the tables' values must reproduce.
    gains = {"seed000_table1": (2.4, 2.2), "seed000_table2": (2.9, 3.2), "seed000_table3": (1.6, 1.3)}
    for table_id, (over_resnet, over_densenet) in gains.items():
        value = {r.label: r.value for r in paper_table(table_id).rows}
        assert value["Ours (DNFFM)"] - value["ResNet50"] == pytest.approx(over_resnet)
        assert value["Ours (DNFFM)"] - value["DenseNet121"] == pytest.approx(over_densenet)
    assert [r.value for r in paper_table("seed003_table3").rows] == [85.6, 85.8, 87.9, 88.2]
    assert [r.value for r in paper_table("seed003_table2").rows] == [88.2, 92.8, 94.0]
    assert [r.value for r in paper_table("seed002_table2").rows] == [85.32, 87.13, 86.57, 88.35, 88.59, 90.84]
    with pytest.raises(ValueError, match="seed000_table1"):
        paper_table("table9")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    from browser import Chromium, find_or_install

    executable = find_or_install()
    if executable is None:
        pytest.skip("needs Debian's chromium: run the tests as root (they apt-get it) or `sudo apt-get install chromium`")
    with Chromium(executable, tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


def one_colour(png: bytes) -> bool:
    import io

    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").getcolors(1) is not None  # None: more than one colour


def test_html_report_is_one_self_contained_file(report):
    page = (report.parent / "report.html").read_text()
    # Every src is inline data; no href but the empty inline favicon; no script at all.
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert re.findall(r'\bhref="([^"]*)"', page) == ["data:,"]
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower()
    # The same content as report.md: configurations, comparisons, paper tables beside ours, loss curves.
    table1 = paper_table("seed000_table1")
    for text in ("Configurations by", "Comparisons", "experiment=dnffm_cifar10 vs baseline_cifar10",
                 table1.title, "Loss curves", "Configuration shared by every trial", "<table>"):
        assert text in page, text
    # Each value the markdown shows for DNFFM's CIFAR10 row is in the page's table.
    want = expected("dnffm_cifar10", table1.scale)
    assert f"<td>{want['mean']:.2f} ± {want['std']:.2f} (n={want['count']})</td>" in page


def test_html_report_loads_in_chromium_with_no_request_error_or_blank_screen(report, chromium):
    page = chromium.load(report.parent / "report.html")
    assert page.failed == [] and page.errors == [], (page.failed, page.errors)
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    assert page.images == 3 and page.broken_images == []
    assert page.screenshot.startswith(b"\x89PNG") and not one_colour(page.screenshot)


def test_the_chromium_check_sees_a_failed_request_and_a_console_error(tmp_path, chromium):
    """The check above can fail: a page that loads an external image and logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body style="background:#fff"><img src="http://192.0.2.1/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    page = chromium.load(bad)
    assert page.failed and "boom" in page.errors and any(u.startswith("http://192.0.2.1/") for u in page.requests)
    assert page.broken_images == ["http://192.0.2.1/x.png"]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert one_colour(chromium.load(blank).screenshot)


def test_watch_rewrites_the_report_as_epochs_land(tmp_path):
    """A writer thread lands a trial's epochs one by one; `watch` rewrites both reports after each, whole."""
    import threading

    from cls.results.report import watch
    from polling import wait_for

    root, out, sweep = tmp_path / "results", tmp_path / "live", "live"
    seen: list[str] = []

    def on_write(path: Path) -> None:
        page = path.with_name("report.html").read_text()
        assert page.rstrip().endswith("</html>")  # never a half-written page
        seen.append(path.read_text())

    stop, failures = threading.Event(), []

    def watching():
        try:
            watch(root, sweep, out, interval=0.05, stop=stop, on_write=on_write)
        except BaseException as e:  # noqa: BLE001 - surfaced by the test below, not lost in a thread
            failures.append(e)
            raise

    def shown(text: str) -> bool:
        assert not failures, failures
        return bool(seen) and text in seen[-1]

    watcher = threading.Thread(target=watching, daemon=True)
    watcher.start()
    try:
        w = ResultsWriter(root, sweep, "t0")
        config = {"model.name": "dnffm", "axis.seed": 0, "seed": 0}

        def writer(epochs: int, status: str) -> threading.Thread:
            def write():
                for e in range(epochs):
                    w.write_epoch(e, epoch_metrics(0, 0.9, e))
                rows = [{"epoch": e, **epoch_metrics(0, 0.9, e)} for e in range(epochs)]
                w.write_trial({**config, **(summarize(rows) if status != "running" else {}), "status": status})
            thread = threading.Thread(target=write)
            thread.start()
            return thread

        writer(0, "running").join()
        # Deadlines are generous: on a loaded machine one rewrite (matplotlib included) takes seconds.
        wait_for(lambda: shown("| `t0` |") and "| 0 |" in seen[-1], 600, "the running trial, no epochs")
        for epochs in (1, 2, 3):
            writer(epochs, "running").join()
            latest = f"{epoch_metrics(0, 0.9, epochs - 1)['eval_top1']:.4f}"
            wait_for(lambda: shown(f"| {epochs} | {latest} |"), 600, f"the report with {epochs} epochs")
        writer(3, "finished").join()
        wait_for(lambda: shown("0.9000") and "## Running trials" not in seen[-1], 600, "the finished trial")
        assert "![loss curves](loss_curves.png)" in seen[-1]
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert not watcher.is_alive()
    # One rewrite per change at most (the store changed 1 + 3 + 1 times, each epoch write being one change
    # more): never a rewrite of an unchanged store.
    assert 5 <= len(seen) <= 1 + (1 + 1) + (2 + 1) + (3 + 1) + (3 + 1)


def test_both_split_orders_stand_apart_beside_the_papers_table_2(tmp_path):
    """sweeps/style_aug.yaml runs each policy in seed 002's split order (expand, then split: §4.3) and in the
    clean one (split, then expand train only); the report gives each order its own line under the paper's
    row, never one pooled number."""
    for i, (order, top1) in enumerate([("paper", 0.91), ("paper", 0.93), ("clean", 0.80)]):
        config = resolved(("experiment=vgg16_catsdogs_style", f"data.split_order={order}"))
        assert config["data.root"].endswith(f"/{order}/cats_vs_dogs-style")  # its own expanded copy
        ResultsWriter(tmp_path, "style-aug", f"t{i}").write_trial(
            {**config, "axis.data.split_order": order, "axis.seed": i, "status": "finished", "best_eval_top1": top1})
    t2 = section(write_report(tmp_path, "style-aug", tmp_path / "out").read_text(), paper_table("seed002_table2").title)
    style = "Wave style + abstract style"
    assert "| 90.84 | 92.00 ± 1.41 (n=2) | +1.16 |" in line_of(t2, f"{style} (data.split_order=paper)")
    assert "| 90.84 | 80.00 (n=1) | -10.84 |" in line_of(t2, f"{style} (data.split_order=clean)")
    assert f"| {style} | 90.84 |" not in t2  # no line that pools the two
