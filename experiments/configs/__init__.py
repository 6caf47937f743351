"""Named experiment configurations: one module per paper, looked up by ``--config NAME``.

``experiments/configs/<paper>.py`` (`carrara`, `chen`, `dcn`, `node_ew`, `segnode`,
`flows`) registers each config with ``@register(name, experiment)``; the function's
docstring says which table or figure of the paper it reproduces (first line, shown by
``--list``) and the command that runs it; every paper setting has a quick smoke form.
A config is a `jaxode.train.classify_config.ClassifyConfig` for ``classify`` (the
record a run's ``config.json["classify"]`` holds), a dict of settings for ``dcn`` /
``segment``, and a dict of flag defaults (applied by `parse`) for the others.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

PAPERS = ("carrara", "chen", "dcn", "node_ew", "segnode", "flows")

_REGISTRY: dict[str, dict[str, Callable[[], Any]]] = {}


def register(name: str, experiment: str = "classify"):
    """Decorator: make a zero-argument config function available as `name` to
    `experiment` (``python -m experiments.<experiment> --config NAME``)."""

    def deco(fn):
        table = _REGISTRY.setdefault(experiment, {})
        if name in table:
            raise ValueError(f"config {name!r} of {experiment} is registered twice.")
        table[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for paper in PAPERS:  # importing a module registers its configs
        importlib.import_module(f"experiments.configs.{paper}")


def names(experiment: str = "classify") -> list[str]:
    """The config names of `experiment`, sorted."""
    _load_all()
    return sorted(_REGISTRY.get(experiment, {}))


def get_config(name: str, experiment: str = "classify"):
    """The config registered as `name` for `experiment` (a fresh object)."""
    _load_all()
    table = _REGISTRY.get(experiment, {})
    if name not in table:
        raise ValueError(f"unknown config {name!r} of {experiment}; choose one of "
                         f"{', '.join(sorted(table))} (see --list).")
    return table[name]()


def describe(name: str, experiment: str = "classify") -> str:
    """First docstring line of a config: the paper table it reproduces."""
    _load_all()
    doc = (_REGISTRY[experiment][name].__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def command(name: str, experiment: str = "classify") -> str:
    """The command line that runs config `name`, as its docstring states it."""
    _load_all()
    doc = _REGISTRY[experiment][name].__doc__ or ""
    return next((ln.strip() for ln in doc.splitlines() if "python -m experiments." in ln), "")


def print_list(experiment: str, out=None) -> None:
    """``--list``: one line per config, its name and what it reproduces."""
    out = out or sys.stdout
    for n in names(experiment):
        print(f"{n:28s} {describe(n, experiment)}", file=out)


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def parse(parser, experiment: str, argv=None, default: str | None = None,
          old_names: tuple[str, ...] = ()):
    """Parse `argv` with `parser` after adding the flags every training experiment shares
    (`jaxode.cli.add_run_flags`; `old_names`: deprecated spellings of ``--name``): the
    named config (default `default`) becomes the flags' defaults
    (`parser.set_defaults`), so explicit flags override it.  ``--list`` prints the
    configs and exits 0; an unknown ``--config`` is refused.

    The config name is read from `argv` directly, not by a second parse, so the
    parser runs exactly once (the docs' command test stops it right there)."""
    from jaxode import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    choices = names(experiment)
    cli.add_run_flags(parser, configs=choices, default_config=default,
                      describe=lambda n: describe(n, experiment), old_names=old_names)
    if "--list" in argv:
        print_list(experiment)
        raise SystemExit(0)
    name = _flag_value(argv, "--config") or default
    if name in choices:  # an unknown name is refused after the parse
        parser.set_defaults(**get_config(name, experiment))
    args = parser.parse_args(argv)
    if args.config not in choices:
        parser.error(f"argument --config: unknown config {args.config!r}; choose one of "
                     f"{', '.join(choices)} (see --list).")
    return args
