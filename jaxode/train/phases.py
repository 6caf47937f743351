"""Training phases that switch how ODE blocks are solved (He, Xie, Lin, Sec. 3.2.2).

NODE-EW trains first through a fixed-step Euler discretisation with plain backprop
(cheap, stable early training), then fine-tunes with the adaptive dopri5 solver and
the backsolve adjoint.  Any model of the project can use it:
``--schedule euler:5,adjoint:10`` means 5 epochs of Euler-backprop, then 10 epochs of
dopri5 + adjoint.  Phase names: ``euler`` (fixed-step Euler, direct backprop through
the steps, `euler_steps` steps) and ``adjoint`` (the model's own adaptive config,
gradient by backsolve).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxode.ode import SolveConfig
from jaxode.ode._tree import with_solve

PHASE_NAMES = ("euler", "adjoint")


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    epochs: int


def parse_schedule(text: str) -> list[Phase]:
    """Parse ``"euler:5,adjoint:10"`` into phases; a clear error for anything else."""
    phases = []
    for part in text.split(","):
        name, sep, epochs = part.strip().partition(":")
        if not sep or name not in PHASE_NAMES or not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(
                f"bad schedule entry {part!r} in {text!r}: write NAME:EPOCHS with NAME in "
                f"{PHASE_NAMES} and EPOCHS a positive integer, e.g. 'euler:5,adjoint:10'."
            )
        phases.append(Phase(name, int(epochs)))
    return phases


def phase_at(phases: list[Phase], epoch: int) -> Phase:
    """The phase that epoch `epoch` (0-based) belongs to; the last phase continues
    past the schedule's end."""
    start = 0
    for phase in phases:
        if epoch < start + phase.epochs:
            return phase
        start += phase.epochs
    return phases[-1]


def total_epochs(phases: list[Phase]) -> int:
    return sum(p.epochs for p in phases)


def phase_config(phase: Phase, base: SolveConfig, euler_steps: int) -> SolveConfig:
    """The SolveConfig of a phase, derived from a block's adaptive `base` config."""
    if phase.name == "euler":
        return SolveConfig(
            solver="euler", num_steps=euler_steps, adjoint="direct",
            rtol=base.rtol, atol=base.atol, max_steps=max(base.max_steps, euler_steps),
            batch_mode=base.batch_mode, on_max_steps=base.on_max_steps,
        )
    return base


def apply_phase(model, phase: Phase, base: SolveConfig, euler_steps: int = 10):
    """Return `model` with every ODEBlock's config set for `phase`."""
    return with_solve(model, phase_config(phase, base, euler_steps))


def seconds_per_epoch(history: list[dict]) -> dict:
    """Training seconds per epoch of each phase, from `fit`'s history rows (``phase``,
    ``train_time_s``; a run without phases counts as ``adjoint``): the number of
    epochs, the first (it includes the phase's compilation), the last, and the median
    of the epochs after the first (None with a single epoch) -- the paper's s/epoch
    of Euler-backprop and adjoint training (Sec. 4.2, Table 1)."""
    by_phase: dict[str, list[float]] = {}
    for row in history:
        by_phase.setdefault(row.get("phase", "adjoint"), []).append(row["train_time_s"])
    return {name: {"epochs": len(t), "first (incl. compile)": t[0], "last": t[-1],
                   "median after the first": float(np.median(t[1:])) if len(t) > 1 else None}
            for name, t in by_phase.items()}
