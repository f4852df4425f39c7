"""The results store: a hive-partitioned Parquet dataset of sweeps (layout and design in store.py).

    from cls.results import ResultsWriter, load, aggregate
    w = ResultsWriter(root, sweep="lr-scan", trial_id="t0001")       # on rank 0 of the trial
    w.write_epoch(epoch, metrics)                                      # each epoch
    w.write_trial({**flatten_config(cfg), **summarize(epochs), "status": "finished", ...})
    compact(root, "lr-scan")                                           # when the sweep is done
    aggregate(load(root, "trials", sweep="lr-scan"), ["model.name", "optim.lr"], "final_eval_top1")
    compare(load(root, "trials", sweep="lr-scan"), "optim.lr").format()     # paired over seeds, with a verdict

Plain `pandas.read_parquet(f"{root}/trials")` and `.../epochs` work too (with a `sweep` column).
"""

from .compare import Comparison, compare
from .read import aggregate, format_summary, load, summary
from .store import STATUSES, compact
from .writer import ResultsWriter, TrialRecord, environment, flatten_config, summarize

__all__ = ["Comparison", "ResultsWriter", "STATUSES", "TrialRecord", "aggregate", "compact", "compare", "environment",
           "flatten_config", "format_summary", "load", "summarize", "summary"]
