"""Derived datasets a sweep's trials read (seed 002 Table 2): built once, before the trials, by `cls sweep`.

A sweep file may declare them under `derive:`, one mapping per output, each of one kind:

    derive:
      - style_network: {out: "${CLS_DATA_ROOT}/styles/wave.pt", content: DIR, style: wave.jpg, steps: 20000}
      - augment: {out: "${CLS_DATA_ROOT}/paper/cats_vs_dogs-pan_noise", src: "${CLS_DATA_ROOT}/cats_vs_dogs",
                  policy: pan+noise, split_order: paper}
      - stylize: {out: "${CLS_DATA_ROOT}/paper/cats_vs_dogs-style", src: "${CLS_DATA_ROOT}/cats_vs_dogs",
                  styles: {cat: "${CLS_DATA_ROOT}/styles/wave.pt", dog: ...}, split_order: paper}

Paths expand environment variables (`${CLS_DATA_ROOT}` defaults to `data`, as the configs' does). Style
networks are built first, then the datasets, each kind's entries in parallel as Ray tasks on the sweep's
cluster (or in this process). Every build is atomic (a dataset is renamed into place whole, a checkpoint
written through a temp file) and idempotent: an output that already holds what its entry asks for is kept as
it is, so running the sweep again rebuilds nothing; an output holding something else is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

KINDS = {
    "style_network": {"out": str, "content": str, "style": str, "steps": int, "size": int, "batch_size": int,
                      "seed": int, "pretrained_vgg": bool},
    "augment": {"out": str, "src": str, "policy": str, "split_order": str, "copies": int, "seed": int},
    "stylize": {"out": str, "src": str, "styles": dict, "split_order": str, "size": int, "fraction": float,
                "seed": int},
}
REQUIRED = {"style_network": ("out", "content", "style"), "augment": ("out", "src", "policy"),
            "stylize": ("out", "src", "styles")}
PATH_KEYS = ("out", "content", "style", "src")


def expand_path(value: str) -> str:
    """Environment variables expanded (CLS_DATA_ROOT defaulting to `data`), made absolute."""
    env = {"CLS_DATA_ROOT": "data", **os.environ}
    text = str(value)
    for name, val in env.items():
        text = text.replace("${" + name + "}", val)
    return str(Path(os.path.expandvars(text)).expanduser().resolve())


def parse(entries: Any, error: Callable[[tuple, str], Exception]) -> list[tuple[str, dict[str, Any]]]:
    """[(kind, options)] of a sweep file's `derive:` list, paths expanded; `error(keys, message)` builds the
    exception that names the file and line."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise error(("derive",), "derive must be a list of {style_network|augment|stylize: {...}} mappings")
    parsed = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            raise error(("derive", i), f"each derive entry is one of {sorted(KINDS)} with its options, got {entry!r}")
        kind, options = next(iter(entry.items()))
        if not isinstance(options, dict):
            raise error(("derive", i, kind), f"{kind} takes a mapping of {sorted(KINDS[kind])}")
        for key, value in options.items():
            if key not in KINDS[kind]:
                raise error(("derive", i, kind, key), f"unknown {kind} option {key!r}; one of {sorted(KINDS[kind])}")
            want = KINDS[kind][key]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise error(("derive", i, kind, key), f"{kind}.{key} must be a {want.__name__}, got {value!r}")
        missing = [k for k in REQUIRED[kind] if k not in options]
        if missing:
            raise error(("derive", i, kind), f"{kind} needs {', '.join(missing)}")
        if options.get("split_order", "clean") not in ("paper", "clean"):
            raise error(("derive", i, kind, "split_order"), "split_order must be paper or clean")
        options = {k: expand_path(v) if k in PATH_KEYS else v for k, v in options.items()}
        if kind == "stylize":
            options["styles"] = {str(c): expand_path(p) for c, p in options["styles"].items()}
        parsed.append((kind, options))
    outs = [o["out"] for _, o in parsed]
    dup = next((o for o in outs if outs.count(o) > 1), None)
    if dup:
        raise error(("derive",), f"two derive entries write {dup}")
    return parsed


def build_one(kind: str, options: dict[str, Any]) -> str:
    """Build one output if it is not there yet: "built" or "kept" (it already held exactly this)."""
    out = Path(options["out"])
    if kind == "style_network":
        import torch

        from cls.data.stylize import train_style_network

        args = {k: v for k, v in options.items() if k not in ("out", "content", "style")}
        if out.is_file():  # what train_style_network recorded in it
            saved = torch.load(out, map_location="cpu", weights_only=True)
            config, style_image = saved.get("config", {}), saved.get("style_image")
            asked = {"content_images": options["content"], "steps": args.get("steps", 20_000),
                     "size": args.get("size", 256), "batch_size": args.get("batch_size", 4),
                     "seed": args.get("seed", 0), "pretrained_vgg": args.get("pretrained_vgg", True)}
            if style_image == options["style"] and all(config.get(k) == v for k, v in asked.items()):
                return "kept"
            raise FileExistsError(f"{out} holds a style network trained otherwise; remove it or choose another out")
        train_style_network(options["content"], options["style"], out, **args)
        return "built"
    manifest = out / "manifest.json"
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    if kind == "augment":
        from cls.data.augment import expand_dataset

        expand_dataset(options["src"], out, options["policy"], options.get("copies", 1), options.get("seed", 0),
                       split_order=options.get("split_order", "clean"))
    else:
        from cls.data.stylize import stylize_dataset

        stylize_dataset(options["src"], out, options["styles"], size=options.get("size"),
                        fraction=options.get("fraction", 1.0), seed=options.get("seed", 0),
                        split_order=options.get("split_order", "clean"))
    return "kept" if before is not None and manifest.stat().st_mtime_ns == before else "built"


def build_derived(entries: list[tuple[str, dict[str, Any]]], *, use_ray: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, str]:
    """Build `entries` (from `parse`): style networks first, then datasets, each stage's entries in parallel
    as Ray tasks (use_ray) or one after another here. Returns {out: "built" | "kept"}."""
    outcome: dict[str, str] = {}
    stages = [[e for e in entries if e[0] == "style_network"], [e for e in entries if e[0] != "style_network"]]
    for stage in stages:
        if not stage:
            continue
        if use_ray:
            import ray

            task = ray.remote(num_cpus=1)(build_one)
            results = ray.get([task.remote(kind, options) for kind, options in stage])
        else:
            results = [build_one(kind, options) for kind, options in stage]
        for (kind, options), result in zip(stage, results):
            outcome[options["out"]] = result
            log(f"derive {kind} {options['out']}: {result}")
    return outcome
