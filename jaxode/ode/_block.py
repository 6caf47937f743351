"""`ODEBlock`: z(t1) = z(t0) + int_{t0}^{t1} f(t, z, args; theta) dt, differentiable in
every input, with failures that name their cause."""

from __future__ import annotations

import dataclasses
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from jaxode.ode import _regularize as reg
from jaxode.ode._config import SolveConfig
from jaxode.ode._regularize import fill_cotangent as _fill_cotangent
from jaxode.ode._solve import all_finite, vector_field
from jaxode.ode._solvers import SolveStats, as_real


def _takes_args(field, args_given: bool) -> bool:
    """Whether to call the field ``f(t, z, args)`` (Diffrax's convention) rather than
    ``f(t, z)`` (torchdiffeq's).  Without args, a field that can be called with two
    arguments (``f(t, z)``, ``f(t, z, args=None)``, a wrapper ``f(t, z, *rest)``) is;
    one that requires three gets ``args=None``."""
    call = field.__call__ if not inspect.isfunction(field) else field
    params = list(inspect.signature(call).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if args_given:
        return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)
    return sum(p.default is p.empty for p in positional) >= 3


def _time_dtype(z0):
    """Times and tolerances follow the state: float64 if any state leaf is float64,
    else float32 (never lower: half-precision times would lose whole steps)."""
    leaves = jtu.tree_leaves(z0)
    return jnp.float64 if any(jnp.dtype(x.dtype) == jnp.float64 for x in leaves) else jnp.float32


def _inner_product(a, b) -> jax.Array:
    return sum(jnp.sum(x * y) for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b)))


# --- the solve, differentiable in its times -------------------------------------------
#
# dL/dts_i = <g_i, f(ts_i, z(ts_i))>   (g_i: the cotangent of z(ts_i)),
# dL/dt0  = -<a(t0), f(t0, z0)>          (a(t0) = dL/dz0, the adjoint at t0),
#
# the end-point terms of the adjoint method (Chen et al. 2018, Appendix B.2).  They are
# added here for every adjoint strategy, so that each strategy only differentiates in
# z0 and theta.  The same wrapper gives a failed (flagged) solve a zero gradient in
# every strategy: its inf outputs would otherwise make NaN through 0 * inf.


def _run(diff, nondiff):
    t0, ts, z0, theta, probe = diff
    vf, static, config, name = nondiff
    t0, ts = jax.lax.stop_gradient((t0, ts))

    def solve(z0_):
        return config.adjoint.solve(vf, config, t0, ts, z0_, (theta, static), probe, name)

    def same_types(out):  # int32 counts whatever the solver returns (int64 under x64)
        zs, stats, t_reached = out
        as_int = lambda x: x.astype(jnp.int32)  # noqa: E731
        stats = SolveStats(*(as_int(x) for x in (stats.steps, stats.accepted, stats.rejected, stats.nfe)),
                           stats.max_steps_reached, stats.nonfinite, as_int(stats.nfe_spent))
        return zs, stats, t_reached.astype(t0.dtype)

    zs, stats, t_reached = same_types(solve(z0))
    # One convention for every solver: what a failed solve did not reach is inf
    # (a fixed-step solver would otherwise return the NaN it met).
    zs = jtu.tree_map(lambda z: jnp.where(stats.failed & ~jnp.isfinite(z), jnp.inf, z), zs)
    return zs, stats, t_reached


@eqx.filter_custom_vjp
def _solve(diff, nondiff):
    return _run(diff, nondiff)


@_solve.def_fwd
def _solve_fwd(perturbed, diff, nondiff):
    del perturbed
    t0, ts, z0, theta, probe = diff

    def inner(z0_, theta_, probe_):
        zs, stats, t_reached = _run((t0, ts, z0_, theta_, probe_), nondiff)
        return zs, (stats, t_reached)

    zs, vjp_fn, (stats, t_reached) = jax.vjp(inner, z0, theta, probe, has_aux=True)
    return (zs, stats, t_reached), (vjp_fn, zs, stats.failed)


@_solve.def_bwd
def _solve_bwd(residuals, grad_out, perturbed, diff, nondiff):
    vjp_fn, zs, failed = residuals
    t0, ts, z0, theta, _ = diff
    vf, static, _, _ = nondiff
    p_t0, p_ts, *_ = perturbed
    g_zs = jtu.tree_map(
        _fill_cotangent, zs, grad_out[0], is_leaf=lambda x: x is None
    )
    g_zs = jtu.tree_map(lambda g: jnp.where(failed, 0, g), g_zs)
    d_z0, d_theta, d_probe = vjp_fn(g_zs)
    evals = 0
    d_t0 = d_ts = None
    if p_ts:
        f_ts = jax.vmap(lambda t, z: vf(t, z, (theta, static)))(ts, zs)
        products = jtu.tree_map(lambda g, f: jnp.sum((g * f).reshape(ts.shape[0], -1), 1), g_zs, f_ts)
        d_ts = sum(jtu.tree_leaves(products))
        evals += ts.shape[0]
    if p_t0:
        d_t0 = -_inner_product(d_z0, vf(t0, z0, (theta, static)))
        evals += 1
    zero_if_failed = lambda g: None if g is None else jnp.where(failed, jnp.zeros_like(g), g)
    d_t0, d_ts, d_z0, d_theta = jtu.tree_map(zero_if_failed, (d_t0, d_ts, d_z0, d_theta))
    # The probe's cotangent counts backward evaluations: the adjoint solve's, plus
    # those made here for the time gradients.
    d_probe = d_probe + jnp.asarray(evals, d_probe.dtype)
    return d_t0, d_ts, d_z0, d_theta, d_probe


# --- failures ------------------------------------------------------------------------

_BINS = 10


def _raise_on_failure(name, config, zs, stats, z0, t0, t1, t_reached):
    """A runtime error that names the block, the cause and how far the solve got.
    Equinox needs static messages, so the progress is reported in tenths of the
    interval: messages 0-9 are for max_steps, 10-19 for NaN/inf, 20 for a z0 that is
    already NaN/inf."""
    span = t1 - t0
    frac = jnp.where(span != 0, (t_reached - t0) / jnp.where(span != 0, span, 1), 0.0)
    tenth = jnp.clip(jnp.floor(frac * _BINS), 0, _BINS - 1).astype(jnp.int32)
    reach = lambda k: f"reached only {10 * k}-{10 * (k + 1)}% of its interval from t0 to t1"
    max_steps = tuple(
        f"ODEBlock {name!r} used all max_steps={config.max_steps} of solver "
        f"{config.solver!r} and {reach(k)}. Increase SolveConfig.max_steps, loosen "
        "rtol/atol, or check the model for blow-up (a too-high learning rate often "
        "causes this); use on_max_steps='flag' to get inf outputs and "
        "SolveStats.max_steps_reached instead of this error."
        for k in range(_BINS)
    )
    nonfinite = tuple(
        f"ODEBlock {name!r}: the state or the vector field became NaN or inf; the solve "
        f"stopped and {reach(k)}. Check the field's parameters and inputs for NaN/inf "
        "(a diverging training run or a too-high learning rate often causes this); use "
        "on_max_steps='flag' to get inf outputs and SolveStats.nonfinite instead."
        for k in range(_BINS)
    )
    bad_z0 = (
        (f"ODEBlock {name!r}: the initial state z0 contains NaN or inf (at t0, before any "
         "step). Check the layers before this block and the input data."),
    )
    z0_bad = ~all_finite(z0)
    index = jnp.where(z0_bad, 2 * _BINS, jnp.where(stats.nonfinite, _BINS + tenth, tenth))
    # Under vmap Equinox reports the largest index of the batch: a solve that did not
    # fail gets 0, and the most telling failure (z0 > NaN/inf > max_steps) wins.
    failed = stats.failed
    index = jnp.max(jnp.where(failed, index, 0))
    return eqx.branched_error_if(zs, jnp.any(failed), index, max_steps + nonfinite + bad_z0)


# --- the block -----------------------------------------------------------------------


class ODEBlock(eqx.Module):
    """A continuous-depth block: z(t1) = z(t0) + int_{t0}^{t1} f(t, z, args; theta) dt.

    This is the ODE block of Chen et al. (2018), used by every paper of the project.

    **Arguments:**

    - `field`: the vector field, an Equinox module (or function) acting on one example
      (any PyTree state), written ``f(t, z)`` or ``f(t, z, args)``.
    - `t0`, `t1`: the integration interval, either direction (t1 < t0 integrates
      backwards).  Arrays: changing them does not recompile; a solve uses them in its
      state's precision.
    - `config`: a `SolveConfig`.
    - `name`: used in error messages.

    ``block(z0)`` returns ``(z(t1), stats)``; ``block(z0, ts=ts)`` returns z at each of
    the times `ts` (monotone from t0 towards t1, stacked on a new leading axis) from
    one solve; ``block(z0, args=args)`` passes `args` to a three-argument field.
    ``block.batched(z0s, ts, args)`` does the same for a batch along axis 0.

    **Regularisers** (`SolveConfig.regularizers`) come back in the `SolveStats`
    fields ``kinetic``, ``jacobian``, ``local_error``, ``taylor``.  The ``jacobian`` probe is
    drawn from a key given explicitly: ``block(z0, key=key)`` (``batched`` splits it
    per example in ``per_sample`` mode), or else the block's `probe_key` field (the
    trainer sets a fresh one on every block at each step); with neither, the call
    raises.

    **Gradients** (reverse mode, every adjoint strategy, both time directions, joint
    and per-sample): with respect to z0, the field's parameters theta, the inexact
    leaves of `args`, `t0`, `t1` and `ts`.  The time gradients are the adjoint
    method's end-point terms, dL/dts_i = <dL/dz(ts_i), f(ts_i, z(ts_i))> and dL/dt0 =
    -<dL/dz0, f(t0, z0)>; they cost one field evaluation per save time (plus one for
    t0), made only when a time is actually differentiated.

    The backward NFE arrives as the gradient of `nfe_probe` (a zero that the forward
    ignores): read it with `backward_nfe`.  `trainable` excludes t0, t1, the
    tolerances and the probe from optimisation (``trainable(model, times=True)``
    learns the times too).
    """

    field: eqx.Module
    t0: jax.Array = eqx.field(converter=as_real)
    t1: jax.Array = eqx.field(converter=as_real)
    config: SolveConfig
    nfe_probe: jax.Array
    name: str = eqx.field(static=True)
    probe_key: jax.Array | None

    def __init__(self, field, t0=0.0, t1=1.0, config: SolveConfig | None = None, *, name="ode",
                 probe_key=None):
        for t_name, t in (("t0", t0), ("t1", t1)):
            if not isinstance(t, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(t))):
                raise ValueError(f"ODEBlock {name!r}: {t_name} must be finite, got {t!r}.")
        self.field = field
        self.t0 = t0
        self.t1 = t1
        self.config = SolveConfig() if config is None else config
        self.nfe_probe = jnp.zeros((), jnp.float32)
        self.name = name
        self.probe_key = probe_key

    # -- public API --------------------------------------------------------------

    def __call__(self, z0, ts=None, args=None, *, key=None):
        """Integrate one example.  Returns ``(z_t1, stats)`` or ``(z_ts, stats)``.
        `key`: the Hutchinson probe's key (``jacobian`` regulariser only)."""
        return self._solve(z0, ts, args, self._key(key), joint_batch=False, args_batched=False)

    def batched(self, z0s, ts=None, args=None, *, args_batched: bool = True, key=None):
        """Integrate a batch (leading axis) in the configured `batch_mode`.

        ``joint``: one adaptive solve over the whole batch; stats are scalars.
        ``per_sample``: one solve per example; stats have a leading batch axis, and
        `SolveStats.nfe_spent` is the batch maximum of `nfe` (what the vmapped loop
        evaluates for every example).  With `ts`, outputs have shape
        ``(batch, len(ts), ...)``.  `args` carries a leading batch axis like `z0s`
        (one conditioning input per example), or is shared by the whole batch with
        ``args_batched=False``.
        """
        key = self._key(key)
        if self.config.batch_mode == "joint":
            zs, stats = self._solve(z0s, ts, args, key, joint_batch=True, args_batched=args_batched)
            if ts is not None:
                zs = jtu.tree_map(lambda z: jnp.swapaxes(z, 0, 1), zs)
            return zs, stats
        in_axes = (0, 0 if args_batched else None, None if key is None else 0)
        keys = None if key is None else jax.random.split(key, jtu.tree_leaves(z0s)[0].shape[0])
        zs, stats = jax.vmap(
            lambda z, a, k: self._solve(z, ts, a, k, joint_batch=False, args_batched=False),
            in_axes=in_axes,
        )(z0s, args, keys)
        spent = jnp.broadcast_to(jnp.max(stats.nfe), stats.nfe.shape)
        return zs, eqx.tree_at(lambda s: s.nfe_spent, stats, spent)

    # -- internals ---------------------------------------------------------------

    def _key(self, key):
        """The probe key: the call's, else `probe_key`; required for ``jacobian``."""
        key = self.probe_key if key is None else key
        if key is None and "jacobian" in self.config.regularizers:
            raise ValueError(
                f"ODEBlock {self.name!r}: the jacobian regulariser needs a key for its "
                "Hutchinson probe: pass key= to the call or set the block's probe_key."
            )
        return key

    def _times(self, ts, dtype):
        """(t0, ts) in the state's precision; without `ts`, ts = [t1]."""
        t0, t1 = self.t0.astype(dtype), self.t1.astype(dtype)
        if ts is None:
            return t0, jnp.reshape(t1, (1,)), False
        ts = jnp.asarray(ts).astype(dtype)
        if ts.ndim != 1 or ts.shape[0] == 0:
            raise ValueError(
                f"ODEBlock {self.name!r}: ts must be a non-empty 1-D array of times, got shape {ts.shape}."
            )
        direction = jnp.where(t1 >= t0, 1, -1).astype(dtype)
        steps_back = jnp.any(jnp.diff(ts) * direction < 0)
        outside = jnp.any((ts - t0) * direction < 0) | jnp.any((ts - t1) * direction > 0)
        ts = eqx.error_if(
            ts,
            steps_back | outside,
            f"ODEBlock {self.name!r}: ts must lie between t0 and t1 and run monotonically "
            "from t0 towards t1 (non-decreasing when t1 > t0, non-increasing when t1 < t0).",
        )
        return t0, ts, True

    def _solve(self, z0, ts, args, key, joint_batch, args_batched):
        _check_state(self.name, z0)
        takes_args = _takes_args(self.field, args is not None)
        if args is not None and not takes_args:
            raise ValueError(
                f"ODEBlock {self.name!r}: args were given but the field "
                f"{type(self.field).__name__} is written f(t, z); write it f(t, z, args) "
                "to receive them."
            )
        dtype = _time_dtype(z0)
        t0, ts_, keep_all = self._times(ts, dtype)
        config = jtu.tree_map(jax.lax.stop_gradient, self.config)
        tols = (config.rtol.astype(dtype), config.atol.astype(dtype))
        config = eqx.tree_at(lambda c: (c.rtol, c.atol), config, tols)
        params, static = eqx.partition(self.field, eqx.is_inexact_array)
        a_diff, a_static = eqx.partition(args, eqx.is_inexact_array)
        vf = vector_field(joint_batch, takes_args, args_batched)
        state, static = z0, (static, a_static)
        names = config.regularizers
        if names:  # integrate Augmented(z, RegState) instead (jaxode.ode._regularize)
            eps = None
            if "jacobian" in names:
                eps = reg.probe_noise(jax.lax.stop_gradient(key), z0, config.jacobian_probe)
            state, static = reg.initial_state(z0, names, joint_batch), (static, eps)
            # a field may regularise only part of its state (a CNF: z, not log p)
            mask = getattr(type(self.field), "regularized_mask", None)
            vf = reg.augmented_field(vf, names, joint_batch, mask, config.jacobian_product,
                                     config.taylor_order, config.taylor_method)
        zs, stats, t_reached = _solve(
            (t0, ts_, state, (params, a_diff), self.nfe_probe),
            (vf, static, config, self.name),
        )
        if names:
            stats = dataclasses.replace(stats, **reg.report(zs, joint_batch))
            zs = zs.z
        if config.on_max_steps == "raise":
            zs = _raise_on_failure(self.name, config, zs, stats, z0, t0, ts_[-1], t_reached)
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


# ------------------------------------------------------------------ model utilities


def is_ode_block(x) -> bool:
    """True for an `ODEBlock` (an ``is_leaf`` for walking a model block by block)."""
    return isinstance(x, ODEBlock)


_is_block = is_ode_block


def backward_nfe(grads) -> jax.Array:
    """Total backward NFE recorded in a gradient PyTree of a model: the sum over all
    `ODEBlock`s in it (and over the batch for ``per_sample`` blocks) of the adjoint
    solve's evaluations and those made for time gradients.  Zero for Diffrax's own
    adjoints (``checkpoint``, ``direct``, ``diffrax_backsolve``) when no time is
    differentiated: their reverse passes are not counted."""
    blocks = [b for b in jtu.tree_leaves(grads, is_leaf=_is_block) if _is_block(b)]
    total = jnp.zeros((), jnp.float32)
    for b in blocks:
        if b.nfe_probe is not None:
            total = total + b.nfe_probe
    return total


def trainable(model, *, times: bool = False):
    """Filter spec (a PyTree of bools) of the leaves an optimiser should update: all
    inexact arrays except each ODEBlock's tolerances, nfe_probe and (unless
    ``times=True``) its t0 and t1."""
    spec = jtu.tree_map(eqx.is_inexact_array, model)

    def freeze(block_spec):
        frozen = [lambda b: b.config.rtol, lambda b: b.config.atol, lambda b: b.nfe_probe]
        if not times:
            frozen += [lambda b: b.t0, lambda b: b.t1]
        for where in frozen:
            block_spec = eqx.tree_at(where, block_spec, False)
        return block_spec

    return jtu.tree_map(lambda x: freeze(x) if _is_block(x) else x, spec, is_leaf=_is_block)


def differentiated(model, *, times: bool = False):
    """Filter spec of what a training step differentiates: the `trainable` leaves plus
    every ODEBlock's nfe_probe (whose gradient is the backward NFE).  Leaving the
    block times out means no field evaluations are spent on their gradients."""
    spec = trainable(model, times=times)
    probe = lambda s: eqx.tree_at(lambda b: b.nfe_probe, s, True) if _is_block(s) else s
    return jtu.tree_map(probe, spec, is_leaf=_is_block)


def train_value_and_grad(fn, *, has_aux: bool = False, times: bool = False):
    """Like `eqx.filter_value_and_grad`, but differentiating only the leaves of the
    first argument that a training step needs (`differentiated`: the trainable arrays
    and the NFE probes).  Differentiating a whole model would also differentiate every
    block's t0 and t1, which costs one field evaluation each per block and step."""

    def value_and_grad(model, *args, **kwargs):
        diff, static = eqx.partition(model, differentiated(model, times=times))
        return jax.value_and_grad(
            lambda d: fn(eqx.combine(d, static), *args, **kwargs), has_aux=has_aux)(diff)

    return value_and_grad
