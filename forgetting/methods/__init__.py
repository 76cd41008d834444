"""Forgetting methods, one package each, found through this registry.

A method is a package ``forgetting/methods/<name>/`` with two parts:
- ``__init__.py``: its ``SPEC`` (name, one-line summary, where its objective lives) and, if it
  has options of its own, their pydantic model: a section of ``forget:`` in ``params.yaml``.
  Torch-free, so every command can check a config or a request in a fraction of a second.
- ``objective.py``: its loss terms and training hooks, a subclass of
  ``forgetting.methods.objective.Objective``; imported when a request trains.

The trainer (``forgetting/train.py``), the config validator, the CLI, the benchmarks and the
tests read the registry; nothing else names a method. Adding one is its package and one entry
in ``BUILTIN`` (or ``register(spec)`` from your own code): see docs/method.md.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

from .spec import MethodSpec, nth

__all__ = ["BUILTIN", "MethodSpec", "check_name", "names", "nth", "options_fields", "register",
           "spec", "specs", "unregister"]

# the packages under forgetting/methods/ that register a method, in the order users see them
BUILTIN = ("gs_lora", "gs_lora_pp", "fg_oriu", "finetune", "neggrad")


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a method requests may name. A second spec under one name is an error
    (two packages claiming ``gs-lora`` would make requests ambiguous)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.options is not None and not spec.options_key:
        raise ValueError(f"method {spec.name!r} has options but no options_key")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method added with ``register`` (tests; a plug-in that is switched off)."""
    if name in (s.name for s in _builtin_specs()):
        raise ValueError(f"method {name!r} is built in")
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def specs() -> tuple[MethodSpec, ...]:
    return tuple(_REGISTRY.values())


def spec(name: str) -> MethodSpec:
    """The spec of ``name``; an error listing the known methods otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}"
                         ) from None


def check_name(name: str) -> str:
    """A pydantic validator: the method must be registered."""
    spec(name)
    return name


def options_fields() -> dict[str, tuple[type[BaseModel], BaseModel]]:
    """``forget:`` sections of the registered methods with options (for ``ForgetConfig``)."""
    return {s.options_key: (s.options, s.options()) for s in _REGISTRY.values()
            if s.options is not None}


def _builtin_specs() -> list[MethodSpec]:
    return [importlib.import_module(f"{__name__}.{pkg}").SPEC for pkg in BUILTIN]


for _s in _builtin_specs():
    register(_s)
