"""The ODE core: the one place in jaxode that calls Diffrax.

A continuous-depth block maps an input state z(t0) to z(t1) by integrating

    dz/dt = f(t, z; theta),        z(t0) = z0,

where f is a vector field (an Equinox module, see `jaxode.fields`) with parameters
theta.  This is the "ODE block" of Chen et al. (2018), used by every paper of the
project: the ODE-Net classifiers of Carrara et al. (Sec. 3), the DCN blocks of
Tomen et al. (Sec. 3), SegNode's multi-resolution ODE and NODE-EW's joint (z, theta)
system.

Public pieces:

- `SolveConfig`: solver, tolerances, gradient mode, step limits, batch mode.
- `ODEBlock`: an Equinox module holding a field, the interval [t0, t1] and a config.
  `block(z0)` integrates one example (any PyTree state); `block.batched(z0s)`
  integrates a batch, either as one joint adaptive solve (torchdiffeq's behaviour) or
  as one adaptive solve per sample (`vmap`), which per-image step counts need.
- Statistics come back with every solve (`SolveStats`): attempted / accepted /
  rejected steps, forward NFE, and whether `max_steps` was hit.  The backward NFE of
  the backsolve adjoint is delivered through the gradient of `ODEBlock.nfe_probe`
  (see `backward_nfe`), because that is the only channel out of a backward pass.

Gradient modes (`SolveConfig.adjoint`):

- ``"backsolve"`` (default): the continuous adjoint of Chen et al. (2018), Sec. 2.
  The adjoint a(t) = dL/dz(t) obeys da/dt = -a^T df/dz and dL/dtheta =
  -int_{t1}^{t0} a^T df/dtheta dt; both are integrated backwards in time together
  with z(t) as one augmented Diffrax solve.  Memory is O(1) in the number of steps.
  It is written here (rather than using `diffrax.BacksolveAdjoint`) so that the
  backward solve's steps are counted and its error norm can skip the parameter
  part (``seminorm=True``, Kidger et al. 2021).
- ``"checkpoint"``: `diffrax.RecursiveCheckpointAdjoint`, exact gradients of the
  discrete solve with recomputation.
- ``"direct"``: `diffrax.DirectAdjoint`, plain reverse-mode through the solver.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx

__all__ = [
    "SolveConfig",
    "SolveStats",
    "ODEBlock",
    "RK4",
    "SOLVERS",
    "ADAPTIVE_SOLVERS",
    "backward_nfe",
    "trainable",
    "MaxStepsReached",
]

# --------------------------------------------------------------------------- solvers


class RK4(diffrax.AbstractERK):
    """The classical fourth-order Runge-Kutta method (fixed step; no error estimate).

    Diffrax ships no classical RK4, and torchdiffeq's ``rk4`` (3/8 rule aside) is a
    common fixed-step baseline in the papers, so it is defined here from its Butcher
    tableau: c = (0, 1/2, 1/2, 1), b = (1/6, 1/3, 1/3, 1/6).
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
# reuse the last stage), and evaluations made before the first step.
_EVALS_PER_STEP = {"dopri5": 6, "tsit5": 6, "bosh3": 3, "euler": 1, "midpoint": 2, "rk4": 4}
_FSAL = {"dopri5": True, "tsit5": True, "bosh3": True}
_ADJOINTS = ("backsolve", "checkpoint", "direct")
_BATCH_MODES = ("joint", "per_sample")


def _as_real(x) -> jax.Array:
    """A time or tolerance as a strongly typed array of JAX's default float dtype
    (float32, or float64 under ``jax_enable_x64``); `ODEBlock` casts it to the
    precision of the state at solve time (`_time_dtype`)."""
    return jnp.asarray(x).astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def _time_dtype(z0):
    """Times and tolerances follow the state: float64 if any state leaf is float64,
    else float32 (never lower: half-precision times would lose whole steps)."""
    leaves = jtu.tree_leaves(z0)
    return jnp.float64 if any(jnp.dtype(x.dtype) == jnp.float64 for x in leaves) else jnp.float32


def _init_evals(solver: str, adaptive: bool) -> int:
    """Evaluations besides the per-step ones: 2 for the initial step-size guess of an
    adaptive solver (`_initial_step`), and 1 for the first stage of an FSAL method
    (made in its first step, then carried from step to step).  A dopri5 solve of n
    attempted steps thus makes 3 + 6 n evaluations (torchdiffeq: 2 + 6 n, as it
    shares f(t0, z0) between its guess and its first step).  tests/test_ode_stats.py
    checks the count against evaluations counted inside the field, for every solver,
    forward and backward."""
    return (2 if adaptive else 0) + (1 if _FSAL.get(solver, False) else 0)


def _nfe(solver: str, adaptive: bool, steps: jax.Array) -> jax.Array:
    return _init_evals(solver, adaptive) + _EVALS_PER_STEP[solver] * steps


# ---------------------------------------------------------------------- config/stats


class SolveConfig(eqx.Module):
    """How an ODE block is integrated and differentiated.

    **Arguments:**

    - `solver`: one of ``dopri5`` (default), ``tsit5``, ``bosh3`` (adaptive) or
      ``euler``, ``midpoint``, ``rk4`` (fixed step).
    - `rtol`, `atol`: tolerances of the adaptive solvers.  Stored as arrays (of JAX's
      default float dtype) so that changing them (for example an inference sweep over
      tolerances) does not recompile a jitted function; a solve uses them in the
      precision of its state (float64 states get float64 tolerances and times).
    - `adjoint`: ``backsolve`` (default), ``checkpoint`` or ``direct``.
    - `seminorm`: backsolve only: measure the backward solve's error on (z, a_z)
      alone, skipping the parameter adjoint (fewer backward steps, same gradient
      accuracy in practice).
    - `max_steps`: the step budget of one solve.
    - `num_steps` / `dt`: the step of a fixed-step solver (give one of them).
    - `batch_mode`: ``joint`` (one adaptive solve for a whole batch, error measured
      over the batch, as torchdiffeq does) or ``per_sample`` (one solve per example
      via `vmap`; per-example statistics).
    - `on_max_steps`: ``raise`` (default: a clear runtime error) or ``flag`` (the
      output is ``inf`` and `SolveStats.max_steps_reached` is True).  The same holds
      for the backsolve adjoint's backward solve: an error, or ``inf`` gradients.
    """

    solver: str = eqx.field(static=True, default="dopri5")
    rtol: jax.Array = eqx.field(default=1e-3, converter=lambda x: _as_real(x))
    atol: jax.Array = eqx.field(default=1e-3, converter=lambda x: _as_real(x))
    adjoint: str = eqx.field(static=True, default="backsolve")
    seminorm: bool = eqx.field(static=True, default=False)
    max_steps: int = eqx.field(static=True, default=4096)
    num_steps: int | None = eqx.field(static=True, default=None)
    dt: float | None = eqx.field(static=True, default=None)
    batch_mode: str = eqx.field(static=True, default="joint")
    on_max_steps: str = eqx.field(static=True, default="raise")

    def __check_init__(self):
        def bad(name, value, allowed):
            raise ValueError(
                f"SolveConfig: unknown {name} {value!r}; choose one of {', '.join(allowed)}."
            )

        if self.solver not in SOLVERS:
            bad("solver", self.solver, SOLVERS)
        if self.adjoint not in _ADJOINTS:
            bad("adjoint", self.adjoint, _ADJOINTS)
        if self.batch_mode not in _BATCH_MODES:
            bad("batch_mode", self.batch_mode, _BATCH_MODES)
        if self.on_max_steps not in ("raise", "flag"):
            bad("on_max_steps", self.on_max_steps, ("raise", "flag"))
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"SolveConfig: max_steps must be a positive int, got {self.max_steps!r}.")
        if self.adaptive:
            if self.num_steps is not None or self.dt is not None:
                raise ValueError(
                    f"SolveConfig: solver {self.solver!r} chooses its own steps; "
                    "num_steps/dt are for the fixed-step solvers euler, midpoint, rk4."
                )
        else:
            if (self.num_steps is None) == (self.dt is None):
                raise ValueError(
                    f"SolveConfig: fixed-step solver {self.solver!r} needs exactly one of "
                    f"num_steps or dt (got num_steps={self.num_steps!r}, dt={self.dt!r})."
                )
            if self.num_steps is not None and not (
                isinstance(self.num_steps, int) and 0 < self.num_steps <= self.max_steps
            ):
                raise ValueError(
                    f"SolveConfig: num_steps must be an int in [1, max_steps={self.max_steps}], "
                    f"got {self.num_steps!r}."
                )
            if self.dt is not None and not self.dt > 0:
                raise ValueError(f"SolveConfig: dt must be positive, got {self.dt!r}.")
        for tol_name, zero_ok in (("rtol", False), ("atol", True)):
            value = getattr(self, tol_name)
            if isinstance(value, jax.core.Tracer):
                continue
            value = np.asarray(value)
            ok = np.all(np.isfinite(value) & ((value >= 0) if zero_ok else (value > 0)))
            if not ok:
                raise ValueError(
                    f"SolveConfig: {tol_name} must be a finite number "
                    f"{'>= 0' if zero_ok else '> 0'}, got {value!r}."
                )
        if self.seminorm and self.adjoint != "backsolve":
            raise ValueError("SolveConfig: seminorm applies to adjoint='backsolve' only.")

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    def replace(self, **changes) -> "SolveConfig":
        """A copy with some settings changed, e.g. ``cfg.replace(rtol=1e-5)``."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return SolveConfig(**fields)


class SolveStats(eqx.Module):
    """Statistics of one forward solve (per example in ``per_sample`` mode).

    - `steps`: attempted steps; `accepted` + `rejected` = `steps`.
    - `nfe`: forward field evaluations: the solver's new stages per attempted step,
      plus 1 for the first stage of an FSAL method (dopri5: 1 + 6 * steps; torchdiffeq's
      dopri5 makes 2 + 6 * steps, one more for its initial step-size guess).
    - `max_steps_reached`: the solve ran out of steps before t1 (output is ``inf``).
    """

    steps: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    nfe: jax.Array
    max_steps_reached: jax.Array


class MaxStepsReached(RuntimeError):
    """Raised (inside a jitted computation, surfaced by Equinox) when a solve runs out
    of `SolveConfig.max_steps`."""


# ---------------------------------------------------------------------- the solvers


@functools.lru_cache(maxsize=None)
def _vector_field(joint_batch: bool):
    """Diffrax's ``vf(t, y, args)`` from a field written for one example; ``args`` is
    the field's array part (its parameters theta), so that gradients can flow to it
    explicitly in the backsolve adjoint."""

    def vf(t, z, args):
        params, static = args
        f = eqx.combine(params, static)
        if joint_batch:
            return jax.vmap(f, in_axes=(None, 0))(t, z)
        return f(t, z)

    return vf


def _controller(config: SolveConfig, norm=optx.rms_norm):
    """Step-size control: a PI(D) controller on `norm` of the scaled error for the
    adaptive solvers, constant steps for the others."""
    if config.adaptive:
        return diffrax.PIDController(rtol=config.rtol, atol=config.atol, norm=norm)
    return diffrax.ConstantStepSize()


def _dt0(config: SolveConfig, t0, t1, span=None):
    """Constant step of a fixed-step solver from t0 towards t1 (None when adaptive).
    With `num_steps`, the step is ``|span| / num_steps`` where `span` (default
    (t0, t1)) is the forward interval, so the backsolve adjoint's per-interval solves
    use the forward's step size."""
    if config.adaptive:
        return None
    if config.num_steps is not None:
        a, b = (t0, t1) if span is None else span
        return jnp.sign(t1 - t0) * jnp.abs(b - a) / config.num_steps
    return jnp.sign(t1 - t0) * config.dt


def _initial_step(vf, config: SolveConfig, t0, t1, z0, args, norm=optx.rms_norm, span=None):
    """The first step: constant for fixed-step solvers; for adaptive ones the
    starting-step algorithm of Hairer, Norsett & Wanner (Solving ODEs I, Sec. II.4),
    from two field evaluations:

        d0 = ||z0 / s||, d1 = ||f(t0, z0) / s||,  s = atol + rtol |z0|,
        h0 = 0.01 d0 / d1,  d2 = ||(f(t0 + h0, z0 + h0 f0) - f0) / s|| / h0,
        h  = min(100 h0, (0.01 / max(d1, d2)) ** (1 / error_order)).

    Diffrax 0.7.2 means to do the same when ``dt0=None``, but its check for a plain
    ODE term fails on the direction-wrapped term it builds internally, so every
    adaptive solve started at dt = 0.01 whatever the field (measured: 3 steps where
    1-2 suffice for easy fields, as torchdiffeq's counts showed).  Not differentiated
    (as in torchdiffeq): a step size is a choice, not part of the model."""
    if not config.adaptive:
        return _dt0(config, t0, t1, span)
    direction = jnp.sign(t1 - t0)
    z0, args = jax.lax.stop_gradient((z0, args))
    scale = jtu.tree_map(lambda y: config.atol + jnp.abs(y) * config.rtol, z0)
    divide = lambda a, b: jtu.tree_map(lambda x, y: x / y, a, b)  # noqa: E731
    f0 = vf(t0, z0, args)
    d0, d1 = norm(divide(z0, scale)), norm(divide(f0, scale))
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1.0, d1))
    z1 = jtu.tree_map(lambda y, f: y + direction * h0 * f, z0, f0)
    f1 = vf(t0 + direction * h0, z1, args)
    d2 = norm(divide(jtu.tree_map(lambda a, b: a - b, f1, f0), scale)) / h0
    max_d = jnp.maximum(d1, d2)
    order = SOLVERS[config.solver]().error_order(diffrax.ODETerm(vf))
    h1 = jnp.where(
        max_d <= 1e-15, jnp.maximum(1e-6, h0 * 1e-3), (0.01 / jnp.maximum(max_d, 1e-15)) ** (1 / order)
    )
    h = jnp.minimum(jnp.minimum(100 * h0, h1), jnp.abs(t1 - t0))
    return jax.lax.stop_gradient(direction * h).astype(jnp.result_type(t0))


def _save_spec(ts):
    """Save z at `ts` (dense output, by interpolation, no extra solves) and the time of
    every accepted step (a scalar per step: cheap), which tells how far a solve got."""
    return diffrax.SaveAt(
        subs=(diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(steps=True, fn=lambda t, y, args: t))
    )


def _diffeqsolve(vf, config, t0, t1, ts, z0, args, adjoint):
    solver = SOLVERS[config.solver]()
    controller = _controller(config)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        solver,
        t0=t0,
        t1=t1,
        dt0=_initial_step(vf, config, t0, t1, z0, args),
        y0=z0,
        args=args,
        saveat=_save_spec(ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=config.max_steps,
        throw=False,
    )


def _stats(config, sol) -> tuple[SolveStats, jax.Array]:
    failed = sol.result == diffrax.RESULTS.max_steps_reached
    step_ts = sol.ys[1]
    t_reached = jnp.max(jnp.where(jnp.isfinite(step_ts), step_ts, -jnp.inf))
    steps = sol.stats["num_steps"]
    stats = SolveStats(
        steps=steps,
        accepted=sol.stats["num_accepted_steps"],
        rejected=sol.stats["num_rejected_steps"],
        nfe=_nfe(config.solver, config.adaptive, steps),
        max_steps_reached=failed,
    )
    return stats, t_reached


# --- backsolve adjoint, with its own step count --------------------------------------


@eqx.filter_custom_vjp
def _backsolve(diff, static, config, t0, ts, joint_batch, name):
    """Forward solve whose VJP is the continuous adjoint.  ``diff = (params, z0,
    probe)``: the field's arrays, the initial state, and a zero scalar whose
    cotangent returns the backward solve's NFE."""
    params, z0, _ = diff
    vf = _vector_field(joint_batch)
    sol = _diffeqsolve(vf, config, t0, ts[-1], ts, z0, (params, static), diffrax.ForwardMode())
    stats, t_reached = _stats(config, sol)
    return sol.ys[0], stats, t_reached


@_backsolve.def_fwd
def _backsolve_fwd(perturbed, diff, static, config, t0, ts, joint_batch, name):
    del perturbed
    out = _backsolve(diff, static, config, t0, ts, joint_batch, name)
    zs = out[0]
    return out, zs


def _adjoint_dynamics(static, joint_batch):
    """Backward-in-time dynamics of (z, a_z, a_theta) (Chen et al. 2018, eq. 4 and
    Appendix B): dz/dt = f, da_z/dt = -a_z^T df/dz, da_theta/dt = -a_z^T df/dtheta."""
    vf = _vector_field(joint_batch)

    def dynamics(t, state, _):
        z, a_z, _, params = state
        f, vjp = jax.vjp(lambda z_, p_: vf(t, z_, (p_, static)), z, params)
        g_z, g_params = vjp(a_z)
        neg = lambda x: -x  # noqa: E731
        return f, jtu.tree_map(neg, g_z), jtu.tree_map(neg, g_params), jtu.tree_map(jnp.zeros_like, params)

    return dynamics


@_backsolve.def_bwd
def _backsolve_bwd(
    zs, grad_out, perturbed, diff, static, config, t0, ts, joint_batch, name
):
    del perturbed
    params, z0, _ = diff
    g_zs = grad_out[0]
    g_zs = jtu.tree_map(
        lambda z, g: jnp.zeros_like(z) if g is None else g, zs, g_zs, is_leaf=lambda x: x is None
    )
    dynamics = _adjoint_dynamics(static, joint_batch)
    if config.seminorm:
        norm = lambda s: optx.rms_norm((s[0], s[1]))  # noqa: E731
    else:
        norm = lambda s: optx.rms_norm((s[0], s[1], s[2]))  # noqa: E731
    solver = SOLVERS[config.solver]()
    controller = _controller(config, norm)
    n = ts.shape[0]
    t_starts = ts[::-1]
    t_ends = jnp.concatenate([ts[:-1][::-1], jnp.reshape(t0, (1,))])

    def interval(carry, i):
        a_z, a_params, nfe, failed = carry
        t_start, t_end = t_starts[i], t_ends[i]
        z_start = jtu.tree_map(lambda z: z[n - 1 - i], zs)
        a_z = jtu.tree_map(lambda a, g: a + g[n - 1 - i], a_z, g_zs)

        def solve(state):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(dynamics),
                solver,
                t0=t_start,
                t1=t_end,
                dt0=_initial_step(dynamics, config, t_start, t_end, state, None, norm,
                                  span=(t0, ts[-1])),
                y0=state,
                stepsize_controller=controller,
                adjoint=diffrax.ForwardMode(),
                max_steps=config.max_steps,
                throw=False,
            )
            out = jtu.tree_map(lambda y: y[-1], sol.ys)
            used = _nfe(config.solver, config.adaptive, sol.stats["num_steps"])
            hit = sol.result == diffrax.RESULTS.max_steps_reached
            return out, jnp.asarray(used, jnp.int32), hit  # int32: int64 under x64

        def skip(state):  # a zero-length interval (a save time equal to t0)
            return state, jnp.asarray(0, jnp.int32), jnp.asarray(False)

        state0 = (z_start, a_z, a_params, params)
        (_, a_z, a_params, _), used, hit = jax.lax.cond(t_start == t_end, skip, solve, state0)
        return (a_z, a_params, nfe + used, failed | hit), None

    a_z0 = jtu.tree_map(jnp.zeros_like, z0)
    a_p0 = jtu.tree_map(jnp.zeros_like, params)
    carry0 = (a_z0, a_p0, jnp.asarray(0, jnp.int32), jnp.asarray(False))
    (a_z, a_params, nfe, failed), _ = jax.lax.scan(interval, carry0, jnp.arange(n))
    # Running out of steps backwards is never silent either: raise, or (``flag``)
    # return inf gradients, which any optimiser step or finiteness check exposes.
    if config.on_max_steps == "raise":
        a_params, a_z = eqx.error_if(
            (a_params, a_z),
            failed,
            f"ODEBlock {name!r}: the backward (adjoint) solve used all max_steps="
            f"{config.max_steps} of solver {config.solver!r} on one of its intervals. "
            "Increase SolveConfig.max_steps, loosen rtol/atol, use seminorm=True, or use "
            "adjoint='checkpoint'; on_max_steps='flag' gives inf gradients instead.",
        )
    else:
        inf_if_failed = lambda g: jnp.where(failed, jnp.inf, g)  # noqa: E731
        a_params, a_z = jtu.tree_map(inf_if_failed, (a_params, a_z))
    return a_params, a_z, nfe.astype(jnp.float32)


# ------------------------------------------------------------------------ ODEBlock


class ODEBlock(eqx.Module):
    """A continuous-depth block: z(t1) = z(t0) + int_{t0}^{t1} f(t, z; theta) dt.

    **Arguments:**

    - `field`: the vector field, a callable Equinox module ``field(t, z) -> dz/dt``
      acting on one example (any PyTree state).
    - `t0`, `t1`: the integration interval (arrays: changing them does not recompile;
      a solve uses them in its state's precision, float64 for float64 states).
    - `config`: a `SolveConfig`.
    - `name`: used in error messages.

    ``block(z0)`` returns ``(z(t1), stats)``; ``block(z0, ts=ts)`` returns z at each of
    the increasing times `ts` (stacked on a new leading axis) from one solve.
    ``block.batched(z0s)`` does the same for a batch along axis 0.

    The backward NFE of the backsolve adjoint arrives as the gradient of
    `nfe_probe` (a zero that the forward ignores): read it with `backward_nfe`.
    `trainable` excludes t0, t1, the tolerances and the probe from optimisation.
    """

    field: eqx.Module
    t0: jax.Array = eqx.field(converter=_as_real)
    t1: jax.Array = eqx.field(converter=_as_real)
    config: SolveConfig
    nfe_probe: jax.Array
    name: str = eqx.field(static=True)

    def __init__(self, field, t0=0.0, t1=1.0, config: SolveConfig | None = None, *, name="ode"):
        for t_name, t in (("t0", t0), ("t1", t1)):
            if not isinstance(t, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(t))):
                raise ValueError(f"ODEBlock {name!r}: {t_name} must be finite, got {t!r}.")
        self.field = field
        self.t0 = t0
        self.t1 = t1
        self.config = SolveConfig() if config is None else config
        self.nfe_probe = jnp.zeros((), jnp.float32)
        self.name = name

    # -- public API --------------------------------------------------------------

    def __call__(self, z0, ts=None):
        """Integrate one example.  Returns ``(z_t1, stats)`` or ``(z_ts, stats)``."""
        return self._solve(z0, ts, joint_batch=False)

    def batched(self, z0s, ts=None):
        """Integrate a batch (leading axis) in the configured `batch_mode`.

        ``joint``: one adaptive solve over the whole batch; stats are scalars.
        ``per_sample``: one solve per example; stats have a leading batch axis.
        With `ts`, outputs have shape ``(batch, len(ts), ...)``.
        """
        if self.config.batch_mode == "joint":
            zs, stats = self._solve(z0s, ts, joint_batch=True)
            if ts is not None:
                zs = jtu.tree_map(lambda z: jnp.swapaxes(z, 0, 1), zs)
            return zs, stats
        return jax.vmap(lambda z: self._solve(z, ts, joint_batch=False))(z0s)

    # -- internals ---------------------------------------------------------------

    def _check_times(self, ts, dtype):
        t0 = jax.lax.stop_gradient(self.t0).astype(dtype)
        t1 = jax.lax.stop_gradient(self.t1).astype(dtype)
        if ts is None:
            return t0, jnp.reshape(t1, (1,)), False
        ts = jnp.asarray(ts).astype(dtype)
        if ts.ndim != 1 or ts.shape[0] == 0:
            raise ValueError(
                f"ODEBlock {self.name!r}: ts must be a non-empty 1-D array of times, got shape {ts.shape}."
            )
        ts = eqx.error_if(
            ts,
            jnp.any(jnp.diff(ts) < 0) | (ts[0] < t0) | (ts[-1] > t1),
            f"ODEBlock {self.name!r}: ts must be non-decreasing and lie in [t0, t1].",
        )
        return t0, ts, True

    def _solve(self, z0, ts, joint_batch):
        _check_state(self.name, z0)
        dtype = _time_dtype(z0)
        t0, ts_, keep_all = self._check_times(ts, dtype)
        config = jtu.tree_map(jax.lax.stop_gradient, self.config)
        tols = (config.rtol.astype(dtype), config.atol.astype(dtype))
        config = eqx.tree_at(lambda c: (c.rtol, c.atol), config, tols)
        params, static = eqx.partition(self.field, eqx.is_inexact_array)
        if config.adjoint == "backsolve":
            zs, stats, t_reached = _backsolve(
                (params, z0, self.nfe_probe), static, config, t0, ts_, joint_batch, self.name
            )
        else:
            adjoint = (
                diffrax.RecursiveCheckpointAdjoint()
                if config.adjoint == "checkpoint"
                else diffrax.DirectAdjoint()
            )
            vf = _vector_field(joint_batch)
            sol = _diffeqsolve(vf, config, t0, ts_[-1], ts_, z0, (params, static), adjoint)
            zs = sol.ys[0]
            stats, t_reached = _stats(config, sol)
        if config.on_max_steps == "raise":
            zs = _raise_on_max_steps(self.name, config, zs, stats, t0, ts_[-1], t_reached)
        if not keep_all:
            zs = jtu.tree_map(lambda z: z[-1], zs)
        return zs, stats


def _check_state(name, z0):
    leaves = jtu.tree_leaves(z0)
    if not leaves:
        raise ValueError(f"ODEBlock {name!r}: the initial state is empty.")
    for leaf in leaves:
        if not (hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)):
            raise TypeError(
                f"ODEBlock {name!r}: the state must hold floating-point arrays, got "
                f"{type(leaf).__name__} with dtype {getattr(leaf, 'dtype', None)}; "
                "convert images with x.astype(jnp.float32) / 255 first."
            )


_BINS = 10


def _raise_on_max_steps(name, config, zs, stats, t0, t1, t_reached):
    """A clear runtime error when a solve runs out of steps.  The message is static
    (as Equinox requires), so the progress is reported in tenths of [t0, t1]."""
    frac = jnp.where(t1 > t0, (t_reached - t0) / (t1 - t0), 0.0)
    index = jnp.clip(jnp.floor(frac * _BINS), 0, _BINS - 1).astype(jnp.int32)
    messages = tuple(
        f"ODEBlock {name!r} used all max_steps={config.max_steps} of solver "
        f"{config.solver!r} (rtol/atol as configured) and reached only "
        f"{10 * k}-{10 * (k + 1)}% of its time interval [t0, t1]. Increase "
        "SolveConfig.max_steps, loosen rtol/atol, or check the model for blow-up "
        "(a too-high learning rate often causes this); use on_max_steps='flag' to get "
        "inf outputs and SolveStats.max_steps_reached instead of this error."
        for k in range(_BINS)
    )
    failed = jnp.any(stats.max_steps_reached)
    index = jnp.min(jnp.where(stats.max_steps_reached, index, _BINS - 1))
    return eqx.branched_error_if(zs, failed, index, messages)


# ------------------------------------------------------------------ model utilities


def _is_block(x) -> bool:
    return isinstance(x, ODEBlock)


def backward_nfe(grads) -> jax.Array:
    """Total backward-solve NFE recorded in a gradient PyTree of a model (the sum over
    all `ODEBlock`s in it, and over the batch for ``per_sample`` blocks).  Zero for the
    ``checkpoint`` and ``direct`` modes, which run no backward ODE solve."""
    blocks = [b for b in jtu.tree_leaves(grads, is_leaf=_is_block) if _is_block(b)]
    total = jnp.zeros((), jnp.float32)
    for b in blocks:
        if b.nfe_probe is not None:
            total = total + b.nfe_probe
    return total


def trainable(model):
    """Filter spec (a PyTree of bools) of the leaves an optimiser should update: all
    inexact arrays except each ODEBlock's t0, t1, tolerances and nfe_probe."""
    spec = jtu.tree_map(eqx.is_inexact_array, model)

    def freeze(block_spec):
        return eqx.tree_at(
            lambda b: (b.t0, b.t1, b.config.rtol, b.config.atol, b.nfe_probe),
            block_spec,
            (False, False, False, False, False),
        )

    return jtu.tree_map(lambda x: freeze(x) if _is_block(x) else x, spec, is_leaf=_is_block)
