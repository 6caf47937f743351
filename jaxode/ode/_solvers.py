"""The solvers, their evaluation counts, and `SolveStats` (what a solve did)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

# --------------------------------------------------------------------------- solvers


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge-Kutta method (fixed step; no error estimate).

    Diffrax ships no classical RK4, and torchdiffeq's ``rk4`` is a common fixed-step
    baseline in the papers, so it is defined here from its Butcher tableau:
    c = (0, 1/2, 1/2, 1), b = (1/6, 1/3, 1/3, 1/6).
    """

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    )
    interpolation_cls: ClassVar[Callable[..., Any]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        del terms
        return 4


SOLVERS: dict[str, type[diffrax.AbstractSolver]] = {
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    "bosh3": diffrax.Bosh3,
    "euler": diffrax.Euler,
    "midpoint": diffrax.Midpoint,
    "rk4": RK4,
}
ADAPTIVE_SOLVERS = ("dopri5", "tsit5", "bosh3")

# Field evaluations per attempted step, after the first (first-same-as-last methods
# reuse the last stage).
_EVALS_PER_STEP = {"dopri5": 6, "tsit5": 6, "bosh3": 3, "euler": 1, "midpoint": 2, "rk4": 4}
_FSAL = {"dopri5": True, "tsit5": True, "bosh3": True}
_BATCH_MODES = ("joint", "per_sample")


def init_evals(solver: str, adaptive: bool) -> int:
    """Evaluations besides the per-step ones: 2 for the initial step-size guess of an
    adaptive solver (`jaxode.ode._solve.initial_step`), and 1 for the first stage of
    an FSAL method (made when the solver starts, then carried from step to step).  A
    dopri5 solve of n attempted steps thus makes 3 + 6 n evaluations (torchdiffeq:
    2 + 6 n, as it shares f(t0, z0) between its guess and its first step).
    tests/test_ode_stats.py checks the count against evaluations counted inside the
    field, for every solver, forward and backward."""
    return (2 if adaptive else 0) + (1 if _FSAL.get(solver, False) else 0)


def count_nfe(solver: str, adaptive: bool, steps: jax.Array) -> jax.Array:
    """Field evaluations of a solve of `steps` attempted steps (see `init_evals`)."""
    return init_evals(solver, adaptive) + _EVALS_PER_STEP[solver] * steps


def as_real(x) -> jax.Array:
    """A time or tolerance as a strongly typed array of JAX's default float dtype
    (float32, or float64 under ``jax_enable_x64``); `ODEBlock` casts it to the
    precision of the state at solve time."""
    return jnp.asarray(x).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


class SolveStats(eqx.Module):
    """Statistics of one forward solve (per example in ``per_sample`` mode).

    - `steps`: attempted steps; `accepted` + `rejected` = `steps`.
    - `nfe`: forward field evaluations made by this solve: the solver's new stages per
      attempted step, plus 3 for an adaptive FSAL method (2 for the starting-step
      guess, 1 for the first stage): dopri5 makes 3 + 6 * steps (torchdiffeq's dopri5
      2 + 6 * steps).  A solve over an empty interval (t0 == t1) makes none.
    - `nfe_spent`: the evaluations the batch paid for this example.  Under
      ``per_sample`` the vmapped solver loop runs until the slowest example is done,
      evaluating the field for every example at each iteration, so this is the batch
      maximum of `nfe`; elsewhere it equals `nfe`.
    - `max_steps_reached`: the solve ran out of steps before its end time.
    - `nonfinite`: the state or the field became NaN or inf (or z0 was not finite).
    - `kinetic`, `jacobian`, `local_error`, `taylor`: the regularisers requested with
      `SolveConfig.regularizers` (None otherwise), differentiable (see
      `jaxode.ode._regularize`); batch means in a joint solve.

    In both failure cases the outputs not reached are ``inf`` (see
    `SolveConfig.on_max_steps`).
    """

    steps: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    nfe: jax.Array
    max_steps_reached: jax.Array
    nonfinite: jax.Array | None = None
    nfe_spent: jax.Array | None = None
    kinetic: jax.Array | None = None
    jacobian: jax.Array | None = None
    local_error: jax.Array | None = None
    taylor: jax.Array | None = None

    @property
    def failed(self) -> jax.Array:
        """True where the solve did not reach its end time (either failure)."""
        if self.nonfinite is None:
            return self.max_steps_reached
        return self.max_steps_reached | self.nonfinite


class MaxStepsReached(RuntimeError):
    """Raised (inside a jitted computation, surfaced by Equinox) when a solve runs out
    of `SolveConfig.max_steps`."""
