"""Adjoint strategies: how the gradient of an ODE solve is computed.

Each strategy is a small `eqx.Module` with one method, ``solve(vf, config, t0, ts,
z0, args, probe, name) -> (zs, stats, t_reached)``, that integrates from t0 through the save
times `ts` and makes the result differentiable with respect to z0 and ``args[0]``
(theta: the field's parameters and the inexact leaves of the user's args).  Times
arrive without gradient: `ODEBlock` adds dL/dt0 and dL/dts itself, the same way for
every strategy (`jaxode.ode._block`).

- `Backsolve` (default): the continuous adjoint of Chen et al. (2018), Sec. 2 and
  Appendix B, written here on Diffrax solves so that the backward solve's steps are
  counted (they come back as the cotangent of ``probe``).
- `RecursiveCheckpoint`: `diffrax.RecursiveCheckpointAdjoint`, the exact gradient of
  the discrete solve with recomputation from `checkpoints` saved states.
- `Direct`: `diffrax.DirectAdjoint`, reverse mode through the solver loop.
- `DiffraxBacksolve`: `diffrax.BacksolveAdjoint`, Diffrax's own continuous adjoint (its
  backward steps are not counted).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx

from jaxode.ode._regularize import fill_cotangent as _fill_cotangent
from jaxode.ode._regularize import strip
from jaxode.ode._solve import controller, diffeqsolve, initial_step
from jaxode.ode._solvers import SOLVERS, count_nfe


class AbstractAdjoint(eqx.Module):
    """A way to differentiate an ODE solve (see the module docstring)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def solve(self, vf, config, t0, ts, z0, args, probe, name):
        """Integrate `vf` from `t0` through `ts`; return (zs, stats, t_reached)."""


class _DiffraxAdjoint(AbstractAdjoint):
    """A strategy whose gradient is one of Diffrax's own adjoints."""

    step_times: ClassVar[bool] = True

    @abc.abstractmethod
    def diffrax_adjoint(self) -> diffrax.AbstractAdjoint: ...

    def solve(self, vf, config, t0, ts, z0, args, probe, name):
        del probe, name  # Diffrax's reverse passes run no counted backward solve.
        return diffeqsolve(vf, config, t0, ts, z0, args, self.diffrax_adjoint(), self.step_times)


class RecursiveCheckpoint(_DiffraxAdjoint):
    """Exact gradient of the discrete solve, recomputing steps from `checkpoints`
    saved states (None: Diffrax's default, about sqrt(max_steps) of them)."""

    name: ClassVar[str] = "checkpoint"
    checkpoints: int | None = eqx.field(static=True, default=None)

    def diffrax_adjoint(self):
        return diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)


class Direct(_DiffraxAdjoint):
    """Reverse mode straight through Diffrax's solver loop."""

    name: ClassVar[str] = "direct"

    def diffrax_adjoint(self):
        return diffrax.DirectAdjoint()


class DiffraxBacksolve(_DiffraxAdjoint):
    """Diffrax's continuous adjoint (the same equations as `Backsolve`, with Diffrax's
    own backward solve: its error norm covers z, a_z and a_theta, and its
    evaluations are not counted).  It saves only at `ts`, so a failed solve reports
    no progress fraction."""

    name: ClassVar[str] = "diffrax_backsolve"
    step_times: ClassVar[bool] = False

    def diffrax_adjoint(self):
        return diffrax.BacksolveAdjoint()


# --- the counted continuous adjoint ---------------------------------------------------


def _mixed_rms_norm(parts):
    """The maximum over every array of z, a_z and a_theta of its RMS norm: each
    parameter's adjoint must meet the tolerance on its own, however small it is
    (torchdiffeq's default norm for its adjoint solve)."""
    return jnp.max(jnp.stack([optx.rms_norm(leaf) for leaf in jtu.tree_leaves(parts)]))


def _rms_norm(parts):
    """One RMS norm over every component together."""
    return optx.rms_norm(parts)


_NORMS = {"rms": _rms_norm, "mixed": _mixed_rms_norm}


class Backsolve(AbstractAdjoint):
    """The continuous adjoint, integrated backwards together with z(t):

        dz/dt = f,   da_z/dt = -a_z^T df/dz,   da_theta/dt = -a_z^T df/dtheta,

    from a_z(t1) = dL/dz(t1), a_theta(t1) = 0 (Chen et al. 2018, eq. 4 and Appendix
    B), restarted at every save time where the loss adds its cotangent.  O(1) memory
    in the number of steps.

    **Arguments:**

    - `seminorm`: measure the backward error on (z, a_z) alone, skipping the
      parameter adjoint (Kidger et al. 2021): fewer backward steps.
    - `norm`: how the backward error of the parts is combined: ``"mixed"`` (the
      default: the maximum of each array's RMS norm, as torchdiffeq's adjoint does)
      or ``"rms"`` (one RMS over all parts: fewer backward steps, but the gradient's
      error then grows as the loss is scaled down, e.g. by a batch mean, because the
      small adjoint is drowned in the pooled norm).  Measured in
      docs/results/ode_core.md (benchmarks/gradient_accuracy.py).
    """

    name: ClassVar[str] = "backsolve"
    seminorm: bool = eqx.field(static=True, default=False)
    norm: str = eqx.field(static=True, default="mixed")

    def __check_init__(self):
        if self.norm not in _NORMS:
            raise ValueError(f"Backsolve: unknown norm {self.norm!r}; choose one of {', '.join(_NORMS)}.")

    def error_norm(self, state):
        z, a_z, a_theta, _ = state
        z, a_z = strip(z), strip(a_z)  # a regulariser's running value steers no step
        parts = (z, a_z) if self.seminorm else (z, a_z, a_theta)
        return _NORMS[self.norm](parts)

    def solve(self, vf, config, t0, ts, z0, args, probe, name):
        theta, static = args
        return _backsolve((theta, z0, probe), (vf, static, config, self, name), t0, ts)


@eqx.filter_custom_vjp
def _backsolve(diff, nondiff, t0, ts):
    """Forward solve whose VJP is the continuous adjoint.  ``diff = (theta, z0,
    probe)``; ``probe`` is a zero scalar whose cotangent returns the backward NFE."""
    theta, z0, _ = diff
    vf, static, config, _, _ = nondiff
    return diffeqsolve(vf, config, t0, ts, z0, (theta, static), diffrax.ForwardMode())


@_backsolve.def_fwd
def _backsolve_fwd(perturbed, diff, nondiff, t0, ts):
    del perturbed
    out = _backsolve(diff, nondiff, t0, ts)
    return out, out[0]


def _adjoint_dynamics(vf, static):
    """The augmented backward dynamics of (z, a_z, a_theta, theta); theta rides along
    in the state (with zero derivative) so that the field sees it as a carried value."""

    def dynamics(t, state, _):
        z, a_z, _, theta = state
        f, vjp = jax.vjp(lambda z_, th_: vf(t, z_, (th_, static)), z, theta)
        g_z, g_theta = vjp(a_z)
        neg = lambda x: -x
        return f, jtu.tree_map(neg, g_z), jtu.tree_map(neg, g_theta), jtu.tree_map(jnp.zeros_like, theta)

    return dynamics


@_backsolve.def_bwd
def _backsolve_bwd(zs, grad_out, perturbed, diff, nondiff, t0, ts):
    del perturbed
    theta, z0, _ = diff
    vf, static, config, strategy, name = nondiff
    g_zs = jtu.tree_map(
        _fill_cotangent, zs, grad_out[0], is_leaf=lambda x: x is None
    )
    dynamics = _adjoint_dynamics(vf, static)
    norm = strategy.error_norm
    solver = SOLVERS[config.solver]()
    n = ts.shape[0]
    t_starts = ts[::-1]
    t_ends = jnp.concatenate([ts[:-1][::-1], jnp.reshape(t0, (1,))])

    def interval(carry, i):
        a_z, a_theta, nfe, failed = carry
        t_start, t_end = t_starts[i], t_ends[i]
        z_start = jtu.tree_map(lambda z: z[n - 1 - i], zs)
        a_z = jtu.tree_map(lambda a, g: a + g[n - 1 - i], a_z, g_zs)

        def solve(state):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(dynamics),
                solver,
                t0=t_start,
                t1=t_end,
                dt0=initial_step(dynamics, config, t_start, t_end, state, None, norm,
                                 span=(t0, ts[-1])),
                y0=state,
                stepsize_controller=controller(config, norm),
                adjoint=diffrax.ForwardMode(),
                max_steps=config.max_steps,
                throw=False,
            )
            out = jtu.tree_map(lambda y: y[-1], sol.ys)
            used = count_nfe(config.solver, config.adaptive, sol.stats["num_steps"])
            return out, jnp.asarray(used, jnp.int32), jnp.asarray(sol.result != diffrax.RESULTS.successful)

        def skip(state):  # a zero-length interval (a save time equal to the one before)
            return state, jnp.asarray(0, jnp.int32), jnp.asarray(False)

        state0 = (z_start, a_z, a_theta, theta)
        (_, a_z, a_theta, _), used, hit = jax.lax.cond(t_start == t_end, skip, solve, state0)
        return (a_z, a_theta, nfe + used, failed | hit), None

    carry0 = (jtu.tree_map(jnp.zeros_like, z0), jtu.tree_map(jnp.zeros_like, theta),
              jnp.asarray(0, jnp.int32), jnp.asarray(False))
    (a_z, a_theta, nfe, failed), _ = jax.lax.scan(interval, carry0, jnp.arange(n))
    # A failed backward solve is never silent: raise, or (``flag``) return inf
    # gradients, which the trainer's finiteness check reports.
    if config.on_max_steps == "raise":
        a_theta, a_z = eqx.error_if(
            (a_theta, a_z),
            failed,
            f"ODEBlock {name!r}: the backward (adjoint) solve of solver {config.solver!r} used all "
            f"max_steps={config.max_steps} or met NaN/inf on one of its intervals. Increase "
            "SolveConfig.max_steps, loosen rtol/atol, use seminorm=True, or use "
            "adjoint='checkpoint'; on_max_steps='flag' gives inf gradients instead.",
        )
    else:
        a_theta, a_z = jtu.tree_map(lambda g: jnp.where(failed, jnp.inf, g), (a_theta, a_z))
    return a_theta, a_z, nfe.astype(jnp.float32)


ADJOINTS: dict[str, type[AbstractAdjoint]] = {
    cls.name: cls for cls in (Backsolve, RecursiveCheckpoint, Direct, DiffraxBacksolve)
}
