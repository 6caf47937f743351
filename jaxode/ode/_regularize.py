"""Regularisers of the dynamics, computed during the forward solve.

Four quantities that make a trained field cheaper to integrate when added to the
loss (requested with ``SolveConfig(regularizers=...)``, reported in `SolveStats`):

- ``kinetic``:  K = int_{t0}^{t1} ||f(t, z)||^2 dt, the kinetic energy of the
  trajectory (Finlay et al., "How to train your neural ODE", ICML 2020, eq. 3);
- ``jacobian``: J = int_{t0}^{t1} ||df/dz (t, z)||_F^2 dt (ibid., eq. 4), estimated
  with Hutchinson's trick for a probe eps with E[eps eps^T] = I (Rademacher or
  Gaussian), in one of two unbiased forms (`SolveConfig.jacobian_product`):
  ``"jvp"`` (default) ||A||_F^2 = E_eps ||A eps||^2, a forward-mode product
  (`jax.jvp`), or ``"vjp"`` ||A||_F^2 = E_eps ||eps^T A||^2, the vector-Jacobian
  product RNODE writes.  Training differentiates the field's dynamics again (the
  adjoint's VJP of the augmented field), so the forward form costs reverse-over-forward
  instead of reverse-over-reverse, and the project's convolution keeps its fast layouts
  under that second derivative (`jaxode.nn.conv`): a training step of the MNIST ODE-Net
  took 6.6 s instead of 19.6 s (docs/results/regularizers.md).  One probe is drawn
  per solve and kept for its whole interval (as in RNODE); both forms are exact for a
  1-D state with a Rademacher probe.
- ``local_error``: E = sum over accepted steps j of |h_j| * rms(err_j), the solver's
  own local error estimates (the embedded pair's difference) weighted by the step,
  after the error-estimate regulariser of Pal et al., "Opening the blackbox:
  accelerating neural differential equations by regularizing internal solver
  heuristics", ICML 2021 (the paper is not among the project's copies; the |h_j|
  weighting is this module's choice).  The estimate is *not* divided by
  atol + rtol |z|: that scaled norm is what the controller keeps near 1, so it would
  not fall as the dynamics become easier to integrate.
- ``taylor``: R_K = int_{t0}^{t1} ||d^K z/dt^K||^2 dt, the squared K-th total time
  derivative of the solution (TayNODE: Kelly, Bettencourt, Johnson, Duvenaud,
  "Learning differential equations that are easy to solve", NeurIPS 2020), K =
  `SolveConfig.taylor_order` (default 2).  d^K z/dt^K is the (K-1)-th total derivative
  of f along the trajectory (d^2 z/dt^2 = df/dt + (df/dz) f, ...), computed by
  Taylor-mode AD (`jax.experimental.jet`, with the custom-JVP calls of the project's
  layers inlined to work around a `jet` bug) or by nested JVPs, which are faster on the
  project's conv fields up to K = 3 (`SolveConfig.taylor_method`, `jaxode.ode._taylor`).
  K = 1 is ``kinetic``.  A high K penalises the dynamics that force an order-p solver into
  small steps (its local error is driven by d^{p+1} z/dt^{p+1}).

The kinetic, Jacobian and Taylor terms are integrated as extra state,
``Augmented(z, RegState(...))``, so every adjoint strategy differentiates them (`Backsolve` carries their adjoints backwards
like any other state).  They do not steer the step size: the error norm of a solve
sees only z (`state_norm`), so requesting them never changes the steps taken.  E is
accumulated by the step-size controller (`jaxode.ode._solve.GuardedPIDController`)
and is differentiable only through the discrete solve (see `SolveConfig`).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx

from jaxode.ode._taylor import TAYLOR_METHODS, total_derivative

REGULARIZERS = ("kinetic", "jacobian", "local_error", "taylor")
JACOBIAN_PROBES = ("rademacher", "gaussian")
JACOBIAN_PRODUCTS = ("jvp", "vjp")
# The regularisers integrated as extra state (local_error comes from the controller
# but has a slot in the state so that it leaves the solve as a differentiable output).
_INTEGRATED = ("kinetic", "jacobian", "taylor")


class RegState(eqx.Module):
    """Running values of the requested regularisers (None when not requested).  Per
    example (shape (B,)) in a joint batch, except `local_error`, which is the error
    of the joint solve (a scalar)."""

    kinetic: jax.Array | None = None
    jacobian: jax.Array | None = None
    local_error: jax.Array | None = None
    taylor: jax.Array | None = None


class Augmented(eqx.Module):
    """The state of a regularised solve: the model's state `z` and the `reg` running
    values."""

    z: object
    reg: RegState


def strip(y):
    """The model's part of a (possibly augmented) state or cotangent."""
    return y.z if isinstance(y, Augmented) else y


def fill_cotangent(z, g):
    """A saved state's cotangent, zero where the loss did not use it (None) and None
    where the state has an empty slot (a regulariser not requested)."""
    if z is None:
        return None
    return jnp.zeros_like(z) if g is None else g


def state_norm(y) -> jax.Array:
    """RMS norm of the model's state only: the regularisers never steer the steps."""
    return optx.rms_norm(strip(y))


def _dtype(z):
    return jnp.result_type(*jtu.tree_leaves(z))


def _sum_squares(tree, joint_batch: bool) -> jax.Array:
    """sum of x^2 over each example (over all but the batch axis when joint)."""
    def one(x):
        axes = tuple(range(1 if joint_batch else 0, x.ndim))
        return jnp.sum(jnp.square(x), axis=axes)

    return sum(one(x) for x in jtu.tree_leaves(tree))


def initial_state(z0, names, joint_batch: bool) -> Augmented:
    """z0 with zeroed running values of the regularisers `names`."""
    dtype = _dtype(z0)
    batch = (jtu.tree_leaves(z0)[0].shape[0],) if joint_batch else ()
    per_example = lambda name: jnp.zeros(batch, dtype) if name in names else None
    local = jnp.zeros((), dtype) if "local_error" in names else None
    return Augmented(z0, RegState(per_example("kinetic"), per_example("jacobian"), local,
                                  per_example("taylor")))


def probe_noise(key, z0, kind: str):
    """The Hutchinson probe eps, shaped like z0: Rademacher (+-1) or standard Gaussian."""
    leaves, treedef = jtu.tree_flatten(z0)
    keys = jax.random.split(key, len(leaves))
    if kind == "rademacher":
        draw = lambda k, x: jax.random.rademacher(k, x.shape, x.dtype)
    else:
        draw = lambda k, x: jax.random.normal(k, x.shape, x.dtype)
    return jtu.tree_unflatten(treedef, [draw(k, x) for k, x in zip(keys, leaves)])


def augmented_field(vf, names: tuple[str, ...], joint_batch: bool, mask=None,
                    product: str = "jvp", taylor_order: int = 2, taylor_method: str = "auto"):
    """The dynamics of ``Augmented(z, reg)`` for Diffrax's field `vf`:

        dz/dt = f,  dK/dt = ||m * f||^2,  dE/dt = 0,
        dJ/dt = ||m * (df/dz eps)||^2   (product "jvp")
             or ||(m * eps)^T df/dz||^2 (product "vjp"),
        dR_K/dt = ||m * d^K z/dt^K||^2  (K = `taylor_order`, by `taylor_method`).

    Its args are ``(theta, (static, eps))``: `vf`'s own args plus the probe eps
    (None without ``jacobian``).  `mask` (a plain function, or None: m = 1) maps the
    state to a 0/1 tree m like it, selecting the part of the state whose dynamics are
    regularised: for a CNF's ``(z, delta)`` only z (RNODE, Finlay et al. 2020, eqs.
    3-4, `jaxode.fields.cnf.CNFField.regularized_mask`).  Either form estimates the
    squared Frobenius norm of d f_m / dz over the whole state (the rows of f that m
    keeps, every column), which is ||d f_z / dz||_F^2 when f_z depends on z alone.
    Likewise m * d^K z/dt^K is exact for the part z of a CNF's state, whose dynamics
    do not depend on the rest."""
    if product not in JACOBIAN_PRODUCTS:
        raise ValueError(f"unknown jacobian product {product!r}; choose one of "
                         f"{', '.join(JACOBIAN_PRODUCTS)}.")
    check_taylor_order(taylor_order)
    if taylor_method not in TAYLOR_METHODS:
        raise ValueError(f"unknown taylor method {taylor_method!r}; choose one of "
                         f"{', '.join(TAYLOR_METHODS)}.")
    return _augmented_field(vf, tuple(names), joint_batch, mask, product, taylor_order,
                            taylor_method)


def check_taylor_order(order) -> None:
    """K of the ``taylor`` regulariser must be an int >= 1 (1: the kinetic energy)."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(
            f"taylor_order must be an int >= 1 (K of int ||d^K z/dt^K||^2 dt; 1 is the "
            f"kinetic energy, TayNODE uses 2 or 3), got {order!r}.")


def _jacobian_term(call, z, eps, select, product, joint_batch):
    """(f(z), per-example ||select(J eps)||^2 or ||select(eps)^T J||^2), J = df/dz."""
    if product == "jvp":
        f, j_eps = jax.jvp(call, (z,), (eps,))
        return f, _sum_squares(select(j_eps), joint_batch)
    f, vjp = jax.vjp(call, z)
    (eps_j,) = vjp(select(eps))
    return f, _sum_squares(eps_j, joint_batch)


@functools.cache
def _augmented_field(vf, names, joint_batch, mask, product, taylor_order, taylor_method):
    # Cached: the function is a static argument of custom-VJP and jitted functions.
    def aug(t, y, args):
        theta, (static, eps) = args
        call = lambda z: vf(t, z, (theta, static))
        select = (lambda tree: tree) if mask is None else (
            lambda tree: jtu.tree_map(jnp.multiply, tree, mask(y.z)))
        jac = tay = f = None
        if "jacobian" in names:
            f, jac = _jacobian_term(call, y.z, eps, select, product, joint_batch)
        if "taylor" in names:
            field = lambda t_, z_: vf(t_, z_, (theta, static))
            f_t, dkz = total_derivative(field, t, y.z, taylor_order, taylor_method)
            f = f_t if f is None else f
            tay = _sum_squares(select(dkz), joint_batch)
        if f is None:
            f = call(y.z)
        kin = _sum_squares(select(f), joint_batch) if "kinetic" in names else None
        local = None if y.reg.local_error is None else jnp.zeros_like(y.reg.local_error)
        return Augmented(f, RegState(kin, jac, local, tay))

    return aug


def step_error(y_error, h) -> jax.Array:
    """|h| * rms of the model's part of a step's error estimate (NaN/inf count as 0:
    such a step is rejected, and a 0 keeps its gradient finite)."""
    err = jtu.tree_map(lambda e: jnp.where(jnp.isfinite(e), e, 0), strip(y_error))
    return optx.rms_norm(err) * jnp.abs(h)


def with_local_error(zs, total):
    """`zs` (saved states, leading time axis) with the controller's accumulated local
    error in the ``local_error`` slot (the total of the whole solve at every save
    time: only its value at t1 is meaningful)."""
    local = zs.reg.local_error
    value = jnp.broadcast_to(total.astype(local.dtype), local.shape)
    return eqx.tree_at(lambda s: s.reg.local_error, zs, value)


def report(zs, joint_batch: bool) -> dict:
    """The regularisers' values at the end of the solve (batch means when joint), for
    `SolveStats`."""
    out = {}
    for name in REGULARIZERS:
        value = getattr(zs.reg, name)
        if value is None:
            continue
        value = value[-1]
        if joint_batch and name in _INTEGRATED:
            value = jnp.mean(value)
        out[name] = value
    return out


def regularizer_stats(stats) -> dict:
    """The requested regularisers of a `SolveStats` (or of a model's aux dict),
    ``{name: value}`` (empty when none was requested): what a model puts in its
    ``aux`` for the trainer."""
    get = stats.get if isinstance(stats, dict) else (lambda n: getattr(stats, n, None))
    return {n: get(n) for n in REGULARIZERS if get(n) is not None}
