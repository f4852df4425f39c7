"""The one declared type of every column of the store's two tables, and the coercion of values to it.

    epochs   trial_id, sweep: string; epoch, written_at, write_seq: int64; every other column (a metric): float64
    trials   the columns of TRIAL_COLUMNS as listed there; final_* / best_*: float64;
             a config column (`model.tau`, `seed`, ...): the type its config schema declares (cls.train.config):
                 int -> int64, float -> float64, bool -> bool, str -> string; tuples and lists -> string (JSON);
                 an annotation OmegaConf cannot type (`pretrained: bool | str`) and a key two models declare
                 differently -> string, so `model.pretrained: {grid: [false, IMAGENET1K_V1]}` is one string
                 column ("false", "IMAGENET1K_V1");
             axis.K: the type of config key K; a group axis (axis.model) or a label axis (axis.backbones): string;
             anything else: bool, int64, float64 or string from the first value written.

Why: pyarrow cannot read one dataset whose files disagree on a column's type (int64 vs string), so a single
`seed=abc` row used to make a sweep unreadable. Every writer coerces each value to its column's type and
refuses one that does not fit, naming key and value; readers still cope with files written before this
(cls.results.read reads a conflicting column as string and warns).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from typing import Any, Mapping

import pyarrow as pa

STRING, INT, FLOAT, BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
WRITTEN_AT = "written_at"  # ns since the epoch, when the row was written: informative, never what wins
WRITE_SEQ = "write_seq"  # (attempt << 32) + a per-writer counter: what decides which copy of a row wins

EPOCH_COLUMNS: dict[str, pa.DataType] = {"sweep": STRING, "trial_id": STRING, "epoch": INT, WRITTEN_AT: INT,
                                         WRITE_SEQ: INT}
TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "sweep": STRING, "trial_id": STRING, "experiment": STRING, "status": STRING, "error": STRING,
    "epochs_done": INT, "attempts": INT, "wall_s": FLOAT, "gpu_hours": FLOAT, "started_at": FLOAT,
    "stopped_at_rung": INT,  # the ASHA rung (epochs) whose decision stopped the trial (cls.sweep.driver)
    "host": STRING, "git_commit": STRING, "torch_version": STRING, "ray_version": STRING, "cls_version": STRING,
    WRITTEN_AT: INT, WRITE_SEQ: INT,
}
_GROUP_AXES = ("model", "data", "experiment", "optim", "trainer", "style", "results")


class StoreTypeError(ValueError):
    """A value that cannot be stored with its column's declared type; the message names key and value."""


def epoch_type(column: str) -> pa.DataType:
    return EPOCH_COLUMNS.get(column, FLOAT)


def trial_type(column: str, value: Any = None, config: Mapping[str, pa.DataType] | None = None) -> pa.DataType:
    """The declared type of `column` of the trials table. `config`: the config's types (`config_types()`,
    which the writer of a run's row passes); `value`: the first value, for columns declared nowhere."""
    if column in TRIAL_COLUMNS:
        return TRIAL_COLUMNS[column]
    if column.startswith(("final_", "best_")):
        return FLOAT
    key = column[len("axis."):] if column.startswith("axis.") else column
    declared = (config or {}).get(key)
    if declared is not None:
        return declared
    if column.startswith("axis.") or key in _GROUP_AXES:
        return STRING  # a label ("resnet50+vgg16") or a group option ("dnffm")
    return _inferred(value)


def _inferred(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    return STRING


def schema_for(table: str, row: Mapping[str, Any], config: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    if table == "epochs":
        return pa.schema([pa.field(k, epoch_type(k)) for k in row])
    return pa.schema([pa.field(k, trial_type(k, v, config)) for k, v in row.items()])


def coerce_row(table: str, row: Mapping[str, Any],
               config: Mapping[str, pa.DataType] | None = None) -> tuple[dict[str, Any], pa.Schema]:
    """`row` with each value coerced to its column's declared type, and the schema to write it with."""
    schema = schema_for(table, row, config)
    return {f.name: coerce(f.name, row[f.name], f.type) for f in schema}, schema


def coerce(column: str, value: Any, kind: pa.DataType) -> Any:
    """`value` as a Python value of arrow type `kind`; raises StoreTypeError naming column and value."""
    if value is None:
        return None
    if kind == STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"  # as Arrow casts bool -> string, and as YAML writes it
        if isinstance(value, (list, tuple, Mapping)):
            return json.dumps(value, default=str)
        return str(value)
    try:
        if kind == BOOL:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif kind == INT and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
        elif kind == FLOAT and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                number = float(value.strip())
                if not math.isnan(number) or value.strip().lower() == "nan":
                    return number
    except ValueError:
        pass
    name = {STRING: "a string", INT: "an integer", FLOAT: "a number", BOOL: "true or false"}.get(kind, str(kind))
    raise StoreTypeError(f"{column}={value!r}: {column} must be {name} (its declared type in the results store "
                         f"is {kind}); set {column} to {name}")


# ------------------------------------------------------------------------------------- the config's own types


def _arrow_type(annotation: Any) -> pa.DataType | dict[str, pa.DataType]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(args[0]) if len(args) == 1 else STRING  # bool | str: either -> string
    if dataclasses.is_dataclass(annotation):
        return _dataclass_types(annotation)
    return {int: INT, float: FLOAT, bool: BOOL, str: STRING}.get(annotation, STRING)


def _dataclass_types(cls: type, prefix: str = "") -> dict[str, pa.DataType]:
    out: dict[str, pa.DataType] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _arrow_type(hints.get(f.name, Any))
        if isinstance(kind, dict):
            out.update({f"{prefix}{f.name}.{k}": v for k, v in kind.items()})
        else:
            out[f"{prefix}{f.name}"] = kind
    return out


@functools.cache
def config_types() -> dict[str, pa.DataType]:
    """Flattened config key (`model.tau`, `data.transforms.size`, `seed`) -> its declared arrow type. A key
    that two models declare with different types is a string column."""
    from cls.models import list_models  # torch: only where a config is written or checked
    from cls.train import config

    out = {k: v for k, v in _dataclass_types(config.TrainConfig).items()
           if k.split(".")[0] not in _GROUP_AXES}
    for group, node in (("data", config.DataConfig), ("optim", config.OptimConfig),
                        ("trainer", config.TrainerConfig), ("style", config.StyleConfig),
                        ("results", config.ResultsConfig)):
        out.update(_dataclass_types(node, prefix=f"{group}."))
    model: dict[str, pa.DataType] = {}
    for name in list_models():
        for key, kind in _dataclass_types(config._model_node(name), prefix="model.").items():
            model[key] = kind if model.get(key, kind) == kind else STRING
    out.update(model)
    return out
