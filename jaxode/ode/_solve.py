"""One Diffrax solve: the vector field seen by Diffrax, step-size control that stops on
NaN/inf, the starting step, and the statistics of a finished solve."""

from __future__ import annotations

import functools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from jaxode.ode._regularize import state_norm, step_error, with_local_error
from jaxode.ode._solvers import SOLVERS, SolveStats, count_nfe

# A step whose error estimate or candidate state is NaN/inf is rejected and the step
# shrunk (by PIDController's factormin, 0.2), which rescues a step that merely
# overshot into a region where the field is undefined.  After this many such steps in
# one solve the solve stops with RESULTS.nonfinite instead of spending all of
# max_steps.  (A total, not a run: a field that is NaN beyond some time t* makes the
# solver creep towards t* with rejections and acceptances alternating.)
NONFINITE_PATIENCE = 16


def vector_field(joint_batch: bool, takes_args: bool, args_batched: bool):
    """Diffrax's ``vf(t, z, args)`` for a field written for one example.

    Diffrax's ``args`` is ``(theta, static)``: ``theta = (params, user_args)`` are the
    arrays that receive gradients (the field's parameters and the inexact leaves of
    the user's `args`), ``static`` the rest.  ``joint_batch`` maps the field over the
    batch axis of z (and of the user's args when ``args_batched``)."""
    return _vector_field(joint_batch, takes_args, args_batched)


@functools.cache
def _vector_field(joint_batch: bool, takes_args: bool, args_batched: bool):
    # Cached so that the same settings give the same function object: it is a static
    # argument of jitted and custom-VJP functions, compared by identity.
    def vf(t, z, args):
        (params, a_diff), (static, a_static) = args
        field = eqx.combine(params, static)
        user_args = eqx.combine(a_diff, a_static)

        def one(z_, a_):
            return field(t, z_, a_) if takes_args else field(t, z_)

        if joint_batch:
            return jax.vmap(one, in_axes=(0, 0 if args_batched else None))(z, user_args)
        return one(z, user_args)

    return vf


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class GuardedPIDController(diffrax.AbstractAdaptiveStepSizeController):
    """Diffrax's PI controller, plus a stop on persistent NaN/inf.

    Diffrax turns a NaN error estimate into inf, rejects the step and shrinks it by
    `factormin`, forever: a NaN initial state or a field that returns NaN spends all
    of `max_steps` (4096 steps of six evaluations) before failing, with a message
    that does not say NaN.  This controller counts the steps whose error
    estimate or candidate state is not finite and ends the solve with
    ``RESULTS.nonfinite`` after `NONFINITE_PATIENCE` of them.

    With `track_error`, its state also accumulates the ``local_error`` regulariser,
    sum over accepted steps of |h| * rms(error estimate) (`jaxode.ode._regularize`),
    differentiably: Diffrax's own controller stops gradients through the error.
    """

    rtol: jax.Array
    atol: jax.Array
    norm: object = eqx.field(static=True, default=state_norm)
    track_error: bool = eqx.field(static=True, default=False)

    def _pid(self):
        return diffrax.PIDController(rtol=self.rtol, atol=self.atol, norm=self.norm)

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, inner = self._pid().init(terms, t0, t1, y0, dt0, args, func, error_order)
        total = jnp.zeros((), jnp.result_type(*jtu.tree_leaves(y0))) if self.track_error else None
        return tnext, (inner, jnp.asarray(0, jnp.int32), total)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, state):
        inner, bad_steps, total = state
        keep, next_t0, next_t1, jump, inner, result = self._pid().adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, inner
        )
        bad_steps = bad_steps + jnp.where(all_finite((y_error, y1_candidate)), 0, 1)
        result = diffrax.RESULTS.where(
            bad_steps >= NONFINITE_PATIENCE, diffrax.RESULTS.nonfinite, result
        )
        if total is not None:
            total = total + jnp.where(keep, step_error(y_error, t1 - t0), 0).astype(total.dtype)
        return keep, next_t0, next_t1, jump, (inner, bad_steps, total), result


def controller(config, norm=state_norm, track_error=False):
    """Step-size control: the guarded PI controller on `norm` of the scaled error for
    the adaptive solvers (by default the RMS norm of the model's state, never of a
    regulariser's running value), constant steps for the others."""
    if config.adaptive:
        return GuardedPIDController(rtol=config.rtol, atol=config.atol, norm=norm,
                                    track_error=track_error)
    return diffrax.ConstantStepSize()


def fixed_step(config, t0, t1, span=None):
    """Signed step of a fixed-step solver from t0 towards t1.  With `num_steps`, the
    step is ``|span| / num_steps`` where `span` (default (t0, t1)) is the forward
    interval, so the backsolve adjoint's per-interval solves use the forward's step."""
    if config.num_steps is not None:
        a, b = (t0, t1) if span is None else span
        return jnp.sign(t1 - t0) * jnp.abs(b - a) / config.num_steps
    return jnp.sign(t1 - t0) * config.dt


def initial_step(vf, config, t0, t1, z0, args, norm=state_norm, span=None):
    """The first step: constant for fixed-step solvers; for adaptive ones the
    starting-step algorithm of Hairer, Norsett & Wanner (Solving ODEs I, Sec. II.4),
    from two field evaluations:

        d0 = ||z0 / s||, d1 = ||f(t0, z0) / s||,  s = atol + rtol |z0|,
        h0 = 0.01 d0 / d1,  d2 = ||(f(t0 + h0, z0 + h0 f0) - f0) / s|| / h0,
        h  = min(100 h0, (0.01 / max(d1, d2)) ** (1 / error_order)).

    Diffrax 0.7.2 means to do the same when ``dt0=None``, but its check for a plain
    ODE term fails on the direction-wrapped term it builds internally, so every
    adaptive solve would start at dt = 0.01 whatever the field.  Not differentiated
    (as in torchdiffeq): a step size is a choice, not part of the model.  A NaN/inf
    guess (a non-finite state) falls back to 1% of the interval, so that the solve
    itself reports the non-finite state."""
    if not config.adaptive:
        return fixed_step(config, t0, t1, span)
    # An empty interval (t0 == t1) takes no step: spend no evaluation on guessing one.
    # (Under vmap with per-example times the cond runs both branches.)
    return jax.lax.cond(t0 == t1, lambda: jnp.zeros((), jnp.result_type(t0)),
                        lambda: _hairer_step(vf, config, t0, t1, z0, args, norm))


def _hairer_step(vf, config, t0, t1, z0, args, norm):
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
    h = jnp.where(jnp.isfinite(h), h, 0.01 * jnp.abs(t1 - t0))
    return jax.lax.stop_gradient(direction * h).astype(jnp.result_type(t0))


def save_spec(ts, step_times=True, controller_state=False):
    """Save z at `ts` (dense output, by interpolation, no extra solves) and, with
    `step_times`, the time of every step (a scalar per step), which tells how far a
    failed solve got; with `controller_state`, the controller's final state."""
    if not step_times:
        return diffrax.SaveAt(ts=ts, controller_state=controller_state)
    return diffrax.SaveAt(
        subs=(diffrax.SubSaveAt(ts=ts), diffrax.SubSaveAt(steps=True, fn=lambda t, y, args: t)),
        controller_state=controller_state,
    )


def diffeqsolve(vf, config, t0, ts, z0, args, adjoint, step_times=True):
    """Integrate from t0 to ts[-1], saving at `ts`; Diffrax differentiates the solve
    with `adjoint` (a `diffrax.AbstractAdjoint`).  Returns (zs, stats, t_reached).
    With the ``local_error`` regulariser, the controller's accumulated error is put
    into the state's ``local_error`` slot of `zs`."""
    t1 = ts[-1]
    local_error = "local_error" in config.regularizers
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        SOLVERS[config.solver](),
        t0=t0,
        t1=t1,
        dt0=initial_step(vf, config, t0, t1, z0, args),
        y0=z0,
        args=args,
        saveat=save_spec(ts, step_times, controller_state=local_error),
        stepsize_controller=controller(config, track_error=local_error),
        adjoint=adjoint,
        max_steps=config.max_steps,
        throw=False,
    )
    zs = sol.ys[0] if step_times else sol.ys
    step_ts = sol.ys[1] if step_times else None
    if local_error:
        zs = with_local_error(zs, sol.controller_state[2])
    stats, t_reached = solve_stats(config, sol, t0, t1, zs, step_ts)
    return zs, stats, t_reached


def solve_stats(config, sol, t0, t1, zs, step_ts=None) -> tuple[SolveStats, jax.Array]:
    """`SolveStats` of a finished Diffrax solve, and the time it reached: the last
    step time saved (direction-aware; Diffrax pads unused entries with inf), or t1
    for a successful solve whose step times were not saved."""
    max_steps = sol.result == diffrax.RESULTS.max_steps_reached
    nonfinite = sol.result == diffrax.RESULTS.nonfinite
    # Fixed-step solvers have no error control: a NaN state simply propagates.
    nonfinite = nonfinite | (~max_steps & ~all_finite(jtu.tree_map(lambda z: z[-1], zs)))
    failed = max_steps | nonfinite
    if step_ts is None:
        t_reached = jnp.where(failed, t0, t1)
    else:
        forward = t1 >= t0
        finite = jnp.isfinite(step_ts)
        last = jnp.where(forward, jnp.max(jnp.where(finite, step_ts, -jnp.inf)),
                         jnp.min(jnp.where(finite, step_ts, jnp.inf)))
        t_reached = jnp.where(jnp.any(finite), last, t0)
    steps = sol.stats["num_steps"]
    nfe = jnp.where(t1 == t0, 0, count_nfe(config.solver, config.adaptive, steps))
    stats = SolveStats(
        steps=steps,
        accepted=sol.stats["num_accepted_steps"],
        rejected=sol.stats["num_rejected_steps"],
        nfe=nfe,
        max_steps_reached=max_steps,
        nonfinite=nonfinite,
        nfe_spent=nfe,
    )
    return stats, t_reached
