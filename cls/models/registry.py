"""Models by name: every architecture is a small registered builder (timm / torchvision style)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

TASKS = ("classification", "image-to-image")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    task: str

    def options(self) -> dict[str, Any]:
        """The builder's keyword options and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY or p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: str = "classification") -> Callable:
    """Register `builder` under `name`; a second registration of one name is a bug and raises."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, task)
        return builder

    return decorate


def list_models(task: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if task is None or e.task == task)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def model_options(name: str) -> dict[str, Any]:
    return get_entry(name).options()


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build model `name`; an option it does not have raises with the list of those it has."""
    entry = get_entry(name)
    options = entry.options()
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(f'{k}={v!r}' for k, v in options.items())}"
        )
    return entry.builder(**overrides)
