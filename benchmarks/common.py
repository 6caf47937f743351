"""Timing helpers shared by the benchmarks.

The rules (DESIGN.md, Benchmarks): compile first, then time with
``block_until_ready``, report the median of several runs (with min and max), and
print NFE beside every time.  `describe_machine` records where a number was
measured, including the load average, because the CPU may be shared.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from jaxode.compile_log import CompileCounter  # re-exported for the benchmarks

__all__ = [
    "Timing",
    "time_jax",
    "time_torch",
    "time_interleaved",
    "describe_machine",
    "machine_tag",
    "cpu_count",
    "write_results",
    "report",
    "markdown_table",
    "compile_with_memory",
    "CompileCounter",
]


class Timing(dict):
    """``{"median", "min", "max", "runs", "first"}`` in seconds; `first` is the first
    call (compilation plus one run for JAX, warm-up for torch)."""

    @property
    def median(self) -> float:
        return self["median"]


def _summary(times: list[float], first: float) -> Timing:
    return Timing(
        median=statistics.median(times), min=min(times), max=max(times),
        runs=len(times), first=first,
    )


def time_jax(fn: Callable[..., Any], *args, repeats: int = 5) -> tuple[Timing, Any]:
    """Call `fn(*args)` once to compile, then `repeats` more times, each waited on
    with ``jax.block_until_ready``.  Returns the timing and the last output."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return _summary(times, first), out


def time_torch(fn: Callable[[], Any], repeats: int = 5) -> tuple[Timing, Any]:
    """One warm-up call of `fn()`, then `repeats` timed calls (torch on the CPU runs
    synchronously, so no explicit wait is needed)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return _summary(times, first), out


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int = 5,
                     progress: Callable[[str], None] | None = None) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time several zero-argument calls round-robin: one first call each (compile or
    warm-up), then `repeats` rounds in which every call runs once.  On a shared
    machine this exposes all candidates to the same load, which a sequential
    schedule does not.  Each call must wait for its own result (for JAX, wrap it in
    ``jax.block_until_ready``)."""
    first, times, outs = {}, {k: [] for k in calls}, {}
    for name, fn in calls.items():
        t = time.perf_counter()
        outs[name] = fn()
        first[name] = time.perf_counter() - t
        if progress:
            progress(f"{name}: first call {first[name]:.1f} s")
    for r in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
        if progress:
            progress(f"round {r + 1}/{repeats} done")
    return {k: _summary(times[k], first[k]) for k in calls}, outs


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> dict[str, Any]:
    """Device, CPU model, core count, load average and library versions."""
    dev = jax.devices()[0]
    info: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    for name in ("equinox", "diffrax", "torch", "torchdiffeq"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    return info


def machine_tag(info: dict[str, Any]) -> str:
    """A short file-name tag such as ``cpu-2core`` or ``gpu-nvidia-h100``."""
    if info["backend"] == "cpu":
        return f"cpu-{info['cores']}core"
    kind = "".join(c if c.isalnum() else "-" for c in str(info["device"]).lower()).strip("-")
    return f"{info['backend']}-{kind}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: str | os.PathLike, stem: str, payload: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    md_path.write_text(markdown + "\n")
    return json_path, md_path


def report(results: dict, out_dir: str | os.PathLike, stem: str,
           to_markdown: Callable[[dict], str]) -> tuple[Path, Path]:
    """End of every benchmark CLI: record the load average after the run in `results`,
    print its Markdown table and write ``<out_dir>/<stem>.{json,md}`` (`write_results`)."""
    try:
        results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    md = to_markdown(results)
    print()
    print(md)
    paths = write_results(out_dir, stem, results, md)
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return paths


def compile_with_memory(fn: Callable[..., Any],
                        *args) -> tuple[Callable[[], Any], dict[str, int] | None]:
    """Compile ``fn(*args)`` once (array leaves of `args` are inputs, everything else
    is static) and read XLA's memory analysis of the compiled program.

    Returns ``(call, memory)``: ``call()`` runs that very executable on `args` (no
    second compilation) and returns the array leaves of ``fn``'s output (non-arrays
    become None); `memory` is ``{"temp", "arguments", "outputs", "alias", "code",
    "total"}`` in bytes with ``total = temp + arguments + outputs - alias`` (the
    buffers the program holds at once), or None where the backend gives no analysis.
    The numbers come from the compiler, so they are independent of the machine's
    other load; ``temp`` is the scratch memory, e.g. the states a gradient keeps.
    """
    import equinox as eqx

    diff, static = eqx.partition(args, eqx.is_array)
    compiled = jax.jit(lambda d: eqx.filter(fn(*eqx.combine(d, static)), eqx.is_array)).lower(
        diff).compile()
    analysis = compiled.memory_analysis()
    memory = None
    if analysis is not None:
        memory = {
            "temp": int(analysis.temp_size_in_bytes),
            "arguments": int(analysis.argument_size_in_bytes),
            "outputs": int(analysis.output_size_in_bytes),
            "alias": int(analysis.alias_size_in_bytes),
            "code": int(getattr(analysis, "generated_code_size_in_bytes", 0)),
        }
        memory["total"] = memory["temp"] + memory["arguments"] + memory["outputs"] - memory["alias"]
    return (lambda: jax.block_until_ready(compiled(diff))), memory


def run_program(module: str, argv: list[str]) -> int:
    """Run ``python -m MODULE ARGV`` in this process (e.g. an experiment a benchmark
    drives) and return its exit status.  The benchmarks do not import the experiments:
    they run their command lines, as a user would."""
    import runpy
    import sys

    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = saved
    return 0
