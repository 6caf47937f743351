"""Vector fields with evolving weights: NODE-EW (He, Xie, Lin, PRCV 2019, Sec. 3.1).

A neural ODE with fixed weights integrates dz/dt = f(t, z; theta) with one theta for
all t.  NODE-EW lets the weights of f move along their own trajectory:

    dz/dt     = f(t, z; theta(t)),            z(0)     = z0,
    dtheta/dt = g(t, theta(t); theta_1),      theta(0) = theta_0,      (paper eq. 4)

where theta_0 (the initial weights of f) and theta_1 (the parameters of the weight
dynamics g) are learned.  With g = 0 the system is the fixed-weight neural ODE.

How it is built here: the joint state is the PyTree ``(z, theta)``, where theta is
the PyTree of the evolving arrays of an ordinary field module (for example a
`ConvODEFunc`), and `EvolvingField` returns ``(f, g)`` on it.  `EvolvingODE` holds
theta_0 and an `ODEBlock` over the joint state, so every gradient mode of the ODE core
applies unchanged.  With ``adjoint="backsolve"`` the backward solve carries the
adjoint of the whole state, a = dL/dz and b = dL/dtheta, plus the parameter adjoint
c = dL/dtheta_1 -- the augmented dynamics of the paper's eq. (6), Algorithm 1.
Note: the paper's eq. (5) writes db/dt = -(dg/dtheta)^T b only; the correct adjoint
also has the term -(df/dtheta)^T a (theta(t) changes f, hence z), which is what the
joint-state backsolve integrates (tests check it against finite differences).

Weight dynamics g (theta_1), designed to stay cheap for convolutional theta: a dense
network on the flattened theta would need O(|theta|^2) parameters.  Two choices,
both exactly zero at initialisation so that a fresh NODE-EW equals its fixed-weight
ODE-Net:

- `ElementwiseDynamics`: per weight tensor l, one small scalar network shared by all
  its entries, g_i = sum_k v_lk tanh(u_lk theta_i + w_lk t + b_lk) + c_l.
  Parameters: (4H + 1) per tensor; cost O(H |theta|) per evaluation.
- `LowRankDynamics`: per weight tensor l reshaped to a matrix M (output channels x
  rest), dM/dt = U_l diag(a_l + t b_l) V_l^T M, a rank-r mixing of the output
  channels.  Parameters: 2 r (O_l + 1) per tensor; cost O(r |theta|).
- `ZeroDynamics`: g = 0 (the fixed-weight neural ODE, for comparisons and tests).

Batches: theta is shared by the examples of a batch, so `EvolvingODE.batched` in the
``joint`` mode solves one state (z of shape (B, ...), theta) with f vmapped over the
batch inside the field -- theta is integrated once, not once per example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from jaxode.ode import ODEBlock, SolveConfig

__all__ = [
    "WeightDynamics",
    "ZeroDynamics",
    "ElementwiseDynamics",
    "LowRankDynamics",
    "EvolvingField",
    "EvolvingODE",
    "theta1_mask",
    "split_weights",
    "num_params",
    "make_dynamics",
]


def num_params(tree) -> int:
    """Number of scalars in the inexact (floating) arrays of a PyTree."""
    return int(sum(x.size for x in jtu.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))))


def split_weights(field, evolve: Callable[[Any], bool] | None = None):
    """Split a field module into (theta, rest): theta holds the arrays that evolve
    (all inexact arrays by default, or those for which `evolve(leaf)` is True); rest
    holds everything else, with None where theta has a leaf."""
    evolve = eqx.is_inexact_array if evolve is None else evolve
    spec = jtu.tree_map(lambda x: eqx.is_inexact_array(x) and bool(evolve(x)), field)
    theta, rest = eqx.partition(field, spec)
    if not jtu.tree_leaves(theta):
        raise ValueError(
            f"split_weights: no evolving arrays found in {type(field).__name__}; pass a "
            "field with floating-point parameters or an `evolve` filter that selects some."
        )
    return theta, rest


def _leaves(theta):
    return jtu.tree_leaves(theta)


class WeightDynamics(eqx.Module):
    """Abstract weight dynamics: ``g(t, theta) -> dtheta/dt`` with the structure of
    theta (a PyTree of arrays).  Its own arrays are theta_1."""

    def __call__(self, t, theta):
        raise NotImplementedError


class ZeroDynamics(WeightDynamics):
    """g = 0: theta(t) = theta_0, the fixed-weight neural ODE (paper Sec. 3.2.1,
    last paragraph)."""

    def __call__(self, t, theta):
        return jtu.tree_map(jnp.zeros_like, theta)


def _check_structure(name, treedef, theta):
    got = jtu.tree_structure(theta)
    if got != treedef:
        raise ValueError(
            f"{name}: theta has structure {got}, but the dynamics were built for "
            f"{treedef}; build the dynamics from the same field's weights."
        )


class ElementwiseDynamics(WeightDynamics):
    """g(t, theta)_i = sum_k v_lk tanh(u_lk theta_i + w_lk t + b_lk) + c_l for every
    entry i of weight tensor l: one scalar network with `hidden` units per tensor,
    shared by its entries (cost O(hidden |theta|), (4 hidden + 1) parameters per
    tensor).

    **Arguments:** `theta`: the weights it will drive (for shapes and scales);
    `hidden`: units of the scalar network; `init_scale`: standard deviation of the
    initial output weights v and c (0, the default, makes g = 0 at initialisation);
    `key`.
    """

    u: jax.Array
    w: jax.Array
    b: jax.Array
    v: jax.Array
    c: jax.Array
    treedef: Any = eqx.field(static=True)

    def __init__(self, theta, hidden: int = 8, *, init_scale: float = 0.0, key):
        leaves = _leaves(theta)
        n = len(leaves)
        if hidden < 1:
            raise ValueError(f"ElementwiseDynamics: hidden must be >= 1, got {hidden!r}.")
        dtype = leaves[0].dtype
        ku, kw, kb, kv, kc = jax.random.split(key, 5)
        # Scale u by the spread of each tensor so that u * theta is O(1).
        spread = jnp.stack([jnp.maximum(jnp.std(x), 1e-3).astype(dtype) for x in leaves])
        self.u = jax.random.normal(ku, (n, hidden), dtype) / spread[:, None]
        self.w = jax.random.normal(kw, (n, hidden), dtype)
        self.b = 0.1 * jax.random.normal(kb, (n, hidden), dtype)
        self.v = init_scale * jax.random.normal(kv, (n, hidden), dtype)
        self.c = init_scale * jax.random.normal(kc, (n,), dtype)
        self.treedef = jtu.tree_structure(theta)

    def __call__(self, t, theta):
        _check_structure("ElementwiseDynamics", self.treedef, theta)
        leaves = _leaves(theta)
        out = []
        for l, x in enumerate(leaves):
            tt = jnp.asarray(t, x.dtype)
            h = jnp.tanh(x[..., None] * self.u[l] + tt * self.w[l] + self.b[l])
            out.append(h @ self.v[l] + self.c[l])
        return jtu.tree_unflatten(self.treedef, out)


class LowRankDynamics(WeightDynamics):
    """dM_l/dt = U_l diag(a_l + t b_l) V_l^T M_l for every weight tensor l viewed as a
    matrix M_l of shape (O_l, rest) (O_l = its leading axis, the output channels of a
    conv or linear weight; a scalar is a 1x1 matrix).  A rank-`rank` time-dependent
    mixing of output channels, linear in theta: cost O(rank |theta|), 2 rank (O_l + 1)
    parameters per tensor.  a, b start at `init_scale` * N(0, 1) (0 by default: g = 0).
    """

    U: tuple
    V: tuple
    a: tuple
    b: tuple
    treedef: Any = eqx.field(static=True)

    def __init__(self, theta, rank: int = 2, *, init_scale: float = 0.0, key):
        leaves = _leaves(theta)
        if rank < 1:
            raise ValueError(f"LowRankDynamics: rank must be >= 1, got {rank!r}.")
        keys = jax.random.split(key, 4 * len(leaves)).reshape(len(leaves), 4, -1)
        U, V, a, b = [], [], [], []
        for x, k in zip(leaves, keys):
            o = x.shape[0] if x.ndim else 1
            U.append(jax.random.normal(k[0], (o, rank), x.dtype) / jnp.sqrt(o).astype(x.dtype))
            V.append(jax.random.normal(k[1], (o, rank), x.dtype) / jnp.sqrt(o).astype(x.dtype))
            a.append(init_scale * jax.random.normal(k[2], (rank,), x.dtype))
            b.append(init_scale * jax.random.normal(k[3], (rank,), x.dtype))
        self.U, self.V, self.a, self.b = tuple(U), tuple(V), tuple(a), tuple(b)
        self.treedef = jtu.tree_structure(theta)

    def __call__(self, t, theta):
        _check_structure("LowRankDynamics", self.treedef, theta)
        out = []
        for l, x in enumerate(_leaves(theta)):
            m = jnp.reshape(x, (x.shape[0] if x.ndim else 1, -1))
            s = self.a[l] + jnp.asarray(t, x.dtype) * self.b[l]
            dm = self.U[l] @ (s[:, None] * (self.V[l].T @ m))
            out.append(jnp.reshape(dm, x.shape))
        return jtu.tree_unflatten(self.treedef, out)


_DYNAMICS = {"zero": ZeroDynamics, "elementwise": ElementwiseDynamics, "lowrank": LowRankDynamics}


def make_dynamics(name: str, theta, *, hidden: int = 8, rank: int = 2,
                  init_scale: float = 0.0, key) -> WeightDynamics:
    """Weight dynamics by name: ``zero``, ``elementwise`` (`hidden` units) or
    ``lowrank`` (`rank`)."""
    if name == "zero":
        return ZeroDynamics()
    if name == "elementwise":
        return ElementwiseDynamics(theta, hidden, init_scale=init_scale, key=key)
    if name == "lowrank":
        return LowRankDynamics(theta, rank, init_scale=init_scale, key=key)
    raise ValueError(f"unknown weight dynamics {name!r}; choose one of {', '.join(_DYNAMICS)}.")


class EvolvingField(eqx.Module):
    """The joint field of NODE-EW: ``(z, theta) -> (f(t, z; theta), g(t, theta))``.

    - `rest`: the base field with its evolving arrays removed (see `split_weights`);
      its remaining arrays are ordinary fixed weights.
    - `g`: a `WeightDynamics` (its arrays are theta_1).
    - `batch`: z carries a leading batch axis that f is vmapped over, theta is shared.
    """

    rest: Any
    g: WeightDynamics
    batch: bool = eqx.field(static=True, default=False)

    def __call__(self, t, state):
        z, theta = state
        f = eqx.combine(theta, self.rest)
        dz = jax.vmap(f, in_axes=(None, 0))(t, z) if self.batch else f(t, z)
        return dz, self.g(t, theta)


def theta1_mask(tree):
    """The same PyTree with True at every leaf that is theta_1 (an array of the weight
    dynamics g of some `EvolvingField`) and False at every other leaf: the one place
    that says which parameters are theta_1, for optimisers that treat them apart."""

    def mark(node):
        if isinstance(node, EvolvingField):
            return eqx.tree_at(lambda f: f.g, jtu.tree_map(lambda _: False, node),
                               jtu.tree_map(lambda _: True, node.g))
        return False

    return jtu.tree_map(mark, tree, is_leaf=lambda x: isinstance(x, EvolvingField))


class _WeightsOnly(eqx.Module):
    """dtheta/dt = g(t, theta) alone (for `EvolvingODE.weights_at`)."""

    g: WeightDynamics

    def __call__(self, t, theta):
        return self.g(t, theta)


class EvolvingODE(eqx.Module):
    """An ODE block with evolving weights (NODE-EW, He et al. Sec. 3.1, eq. 4).

    **Arguments:**

    - `field`: the base field f, an Equinox module ``f(t, z)``; its evolving arrays
      become theta_0 (learned), the others stay fixed weights.
    - `dynamics`: a `WeightDynamics`, or a callable ``theta_0 -> WeightDynamics``,
      or a name for `make_dynamics` (then `key` is needed).
    - `t0`, `t1`, `config`: as for `ODEBlock` (the joint state is solved together;
      every gradient mode applies to it).
    - `evolve`: optional filter choosing which arrays of `field` evolve.

    ``ode(z0)`` returns ``((z(t1), theta(t1)), stats)``; with `ts`, z and theta at each
    time.  ``ode.batched(z0s)`` integrates a batch; in the ``joint`` batch mode
    theta is integrated once for the batch.  `fixed_field()` is the base field at
    theta_0, i.e. the fixed-weight neural ODE of the same size.
    """

    theta0: Any
    block: ODEBlock

    def __init__(self, field, dynamics, t0=0.0, t1=1.0, config: SolveConfig | None = None,
                 *, evolve=None, key=None, name: str = "node_ew", **dynamics_kwargs):
        theta0, rest = split_weights(field, evolve)
        if isinstance(dynamics, str):
            if key is None and dynamics != "zero":
                raise ValueError("EvolvingODE: a named dynamics needs a PRNG `key`.")
            dynamics = make_dynamics(dynamics, theta0, key=key, **dynamics_kwargs)
        elif not isinstance(dynamics, WeightDynamics):
            dynamics = dynamics(theta0)
        if not isinstance(dynamics, WeightDynamics):
            raise TypeError(
                f"EvolvingODE: dynamics must be a WeightDynamics (got {type(dynamics).__name__})."
            )
        self.theta0 = theta0
        self.block = ODEBlock(EvolvingField(rest, dynamics), t0, t1, config, name=name)

    @property
    def g(self) -> WeightDynamics:
        return self.block.field.g

    def fixed_field(self):
        """The base field with theta = theta_0 (what a fixed-weight ODE-Net uses)."""
        return eqx.combine(self.theta0, self.block.field.rest)

    def __call__(self, z0, ts=None):
        return self.block((z0, self.theta0), ts=ts)

    def batched(self, z0s, ts=None):
        """A batch along axis 0.  Returns ``((zs, theta), stats)``: zs has the batch
        axis first (then the time axis when `ts` is given); theta is the shared
        trajectory in ``joint`` mode and one copy per example in ``per_sample`` mode."""
        if self.block.config.batch_mode == "joint":
            block = eqx.tree_at(
                lambda b: b.field, self.block, dataclasses.replace(self.block.field, batch=True)
            )
            (zs, theta), stats = block((z0s, self.theta0), ts=ts)
            if ts is not None:
                zs = jtu.tree_map(lambda z: jnp.swapaxes(z, 0, 1), zs)
            return (zs, theta), stats
        return jax.vmap(lambda z: self.block((z, self.theta0), ts=ts))(z0s)

    @eqx.filter_jit
    def weights_at(self, ts):
        """theta(t) at the times `ts` (solving dtheta/dt = g alone, for inspection)."""
        cfg = self.block.config
        block = ODEBlock(_WeightsOnly(self.g), self.block.t0, self.block.t1,
                         cfg.replace(adjoint="checkpoint", seminorm=False), name="theta")
        return block(self.theta0, ts=ts)[0]
