"""Named experiment configurations, looked up by name (``--config NAME``).

A config is a function registered with `register` that returns a config object
(`experiments.configs.classify.ClassifyConfig` for the classification pipeline).
Names: ``carrara-cifar10-{resnet,resode,odeonly}``, ``chen-mnist-{odenet,resnet}``
and the small ``smoke-*`` variants; `names()` lists them.
"""

from __future__ import annotations

from typing import Any, Callable

_REGISTRY: dict[str, Callable[[], Any]] = {}


def register(name: str):
    """Decorator: make a zero-argument config function available as `name`."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"config {name!r} is registered twice.")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all():
    from experiments.configs import classify  # noqa: F401  (registers its configs)


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_config(name: str):
    """The config registered as `name` (a fresh object)."""
    _load_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]()


def describe(name: str) -> str:
    _load_all()
    doc = (_REGISTRY[name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""
