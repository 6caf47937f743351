"""Opt-in XLA:CPU compiler options (issue 19, "cheaper evaluations").

XLA:CPU in jaxlib 0.10 hands some HLO to YNNPACK ("YNN fusions"). By default only
convolutions and reductions go there (``--xla_cpu_experimental_ynn_fusion_type``'s
default list); elementwise ops and dots are compiled by XLA's own loop emitters.
`CPU_FAST_FLAGS` adds ``eltwise`` and ``dot`` to that list, so that the ReLU, the
GroupNorm affine and the t-channel arithmetic of the Chen et al. (2018) field
f(t, z) = GN(ConcatConv(t, ReLU(GN(ConcatConv(t, ReLU(GN(z))))))) run as YNN fusions
next to its convolutions.  Measured on the shared 2-core CPU (docs/results/field_cost.md,
"XLA:CPU options"): the field VJP costs 8-33% less CPU at batch 64, but the training step
at the suite's batch 128 costs 4-14% more; on the quiet machine (2026-12-06 13:19 UTC) the
batch-128 step cost 0.82x torchdiffeq per NFE with it against 0.77x with XLA's defaults.
It is therefore opt-in and not recommended; this module keeps the switch safe to use.

These are ``xla_cpu_*`` options: only computations compiled for the CPU see them.  On a
GPU or TPU the model's programs are compiled by that backend, which ignores them, so
the setting is not a CPU-only workaround imposed on accelerators; it simply has no
effect there.

Use it in one of two ways, before the first JAX computation of the process (XLA reads
``XLA_FLAGS`` when it creates the CPU backend, not at ``import jax``):

- ``JAXODE_CPU_FAST=1 python -m ...``: `jaxode` applies it when first imported;
- ``use_cpu_fast()`` in a script, or ``--xla-cpu fast`` of ``benchmarks.suite``.

Flags the user already put in ``XLA_FLAGS`` always win: an option named there is not
added again (a warning names it).  The default (no variable, no call) changes nothing.
"""

from __future__ import annotations

import os
import shlex
import warnings

ENV_VAR = "JAXODE_CPU_FAST"

#: added to ``XLA_FLAGS`` by `use_cpu_fast`: YNN fusions also for elementwise ops and dots
#: ('+' adds to XLA's default list, which keeps convolutions and reductions)
CPU_FAST_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=+eltwise,+dot",)

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def flag_name(flag: str) -> str:
    """``--xla_foo=bar`` -> ``xla_foo``."""
    return flag.lstrip("-").split("=", 1)[0]


def compose_xla_flags(current: str, extra=CPU_FAST_FLAGS) -> tuple[str, list[str]]:
    """(``XLA_FLAGS`` with each flag of `extra` appended unless `current` already sets
    an option of that name, the flags of `extra` left out because of that)."""
    present = {flag_name(f) for f in shlex.split(current or "")}
    added = [f for f in extra if flag_name(f) not in present]
    skipped = [f for f in extra if flag_name(f) in present]
    return " ".join([current.strip()] + added if current and current.strip() else added), skipped


def env_requests_cpu_fast(environ=None) -> bool:
    """Whether ``JAXODE_CPU_FAST`` asks for `CPU_FAST_FLAGS`; a value other than
    1/true/yes/on or 0/false/no/off/empty is an error."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{ENV_VAR}={value!r}: use 1 to add the XLA:CPU options of jaxode.backend "
                     f"({' '.join(CPU_FAST_FLAGS)}) or 0 / unset for XLA's defaults.")


def _backends_initialized() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def use_cpu_fast(enable: bool = True) -> str:
    """Add `CPU_FAST_FLAGS` to ``os.environ["XLA_FLAGS"]`` (if `enable`); call before
    the first JAX computation.  Returns the setting in words, for benchmark records:
    ``"default"``, ``"fast"`` or ``"fast (partly: ...)"``.  Warns and changes nothing
    when the backend already exists (the flags would be ignored); never overrides an
    option already in ``XLA_FLAGS``."""
    if not enable:
        return "default"
    current = os.environ.get("XLA_FLAGS", "")
    new, skipped = compose_xla_flags(current)
    if skipped:
        warnings.warn(f"XLA_FLAGS already sets {', '.join(flag_name(f) for f in skipped)}; "
                      f"keeping the user's value instead of {' '.join(skipped)}", stacklevel=2)
    if new == current:
        return "default (XLA_FLAGS already sets these options)"
    if _backends_initialized():
        warnings.warn("jaxode.backend.use_cpu_fast: JAX's backend already exists, so XLA_FLAGS "
                      "can no longer change; call it (or set JAXODE_CPU_FAST=1) before the first "
                      "JAX computation. Keeping XLA's defaults.", stacklevel=2)
        return "default (too late: backend already created)"
    os.environ["XLA_FLAGS"] = new
    return "fast" if not skipped else f"fast (partly: {' '.join(skipped)} left to the user's value)"


def xla_cpu_setting() -> str:
    """The setting in words from the environment as it is now: ``"fast"`` when every
    flag of `CPU_FAST_FLAGS` is in ``XLA_FLAGS``, else ``"default"``."""
    flags = set(shlex.split(os.environ.get("XLA_FLAGS", "")))
    return "fast" if all(f in flags for f in CPU_FAST_FLAGS) else "default"


def apply_env() -> str:
    """`use_cpu_fast` when ``JAXODE_CPU_FAST`` asks for it (called on ``import jaxode``)."""
    return use_cpu_fast() if env_requests_cpu_fast() else "default"
