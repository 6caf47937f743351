"""Counting XLA compilations, to show that a setting does not recompile.

Tolerances, end times and batch contents are arrays in jaxode (`SolveConfig`,
`ODEBlock`), so changing them must reuse the compiled program.  The benchmarks and
the experiments' sweeps check that by counting JAX's compile events: JAX reports one
``backend_compile`` event per program handed to XLA and none for a cache hit.

One process-wide listener (`CompileLog.get()`) records every event from its first
use on; a window of calls is measured between `mark()` and `since(mark)`, or with the
context manager `CompileCounter`::

    with CompileCounter() as cc:
        step(model, batch)
    cc.count, cc.names        # compilations in the block, and the name of each program
"""

from __future__ import annotations

import jax

__all__ = ["CompileLog", "CompileCounter", "compile_count"]

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                "/jax/core/compile/jaxpr_to_mlir_module_duration")


class CompileLog:
    """Every compile event of this process since the first `get()`:
    ``events`` is a list of ``(event name, program name, seconds)``."""

    _instance: "CompileLog | None" = None

    def __init__(self):
        self.events: list[tuple[str, str, float]] = []
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    @classmethod
    def get(cls) -> "CompileLog":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT or event in TRACE_EVENTS:
            self.events.append((event, str(kwargs.get("fun_name", "?")), float(duration)))

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int, end: int | None = None) -> dict:
        """Between `mark` and `end` (default now): ``compiles`` (XLA programs),
        ``names`` (their names), ``backend_compile_s`` (XLA's time) and
        ``trace_lower_s`` (tracing and lowering to MLIR)."""
        window = self.events[mark:end]
        compiled = [(name, s) for ev, name, s in window if ev == BACKEND_COMPILE_EVENT]
        return dict(compiles=len(compiled), names=[n for n, _ in compiled],
                    backend_compile_s=sum(s for _, s in compiled),
                    trace_lower_s=sum(s for ev, _, s in window if ev in TRACE_EVENTS))


def compile_count() -> int:
    """XLA compilations of this process since the compile log started."""
    return CompileLog.get().since(0)["compiles"]


class CompileCounter:
    """The XLA compilations made inside a ``with`` block (see the module docstring);
    `count_of(substring)` counts only the programs whose name contains `substring`
    (e.g. ``"_train_step"``)."""

    def __init__(self):
        self._log = CompileLog.get()
        self._start = self._end = None

    def __enter__(self) -> "CompileCounter":
        self._start, self._end = self._log.mark(), None
        return self

    def __exit__(self, *exc) -> None:
        self._end = self._log.mark()

    @property
    def names(self) -> list[str]:
        if self._start is None:
            return []
        return self._log.since(self._start, self._end)["names"]

    @property
    def count(self) -> int:
        return len(self.names)

    def count_of(self, substring: str) -> int:
        return sum(substring in n for n in self.names)
