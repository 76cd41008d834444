"""What the registry knows of a method without importing torch, and the per-request lists
the methods' configs share."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class MethodSpec:
    """What the registry knows of a method without importing torch."""

    name: str  # what a request names, e.g. "gs-lora++"
    summary: str  # one line: --help, docs, error messages
    objective: str  # "package.module:Class", imported when a request trains
    options: type[BaseModel] | None = None  # its own options ...
    options_key: str | None = None  # ... as forget.<options_key> in params.yaml
    # (forget config, request index) -> the config one request of this method trains with:
    # per-request schedules of its own options (the authors' continual scripts)
    for_request: Callable[[Any, int], Any] | None = None

    def load(self) -> type:
        """The objective class (imports torch)."""
        module, _, cls = self.objective.partition(":")
        return getattr(importlib.import_module(module), cls)


def nth(values: list[float], index: int) -> float:
    """Entry ``index`` of a per-request list (``index``: 0 for the first request on the base
    model), the last one past its end: the authors' continual scripts set values per task."""
    if index < 0:
        raise ValueError(f"request index must be >= 0, got {index}")
    return values[min(index, len(values) - 1)]
