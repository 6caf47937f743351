"""Total time derivatives of an ODE's solution (for TayNODE), by Taylor mode or nested JVPs.

For dz/dt = f(t, z) the K-th derivative of the solution through (t, z) is the
(K-1)-th total derivative of f along it,

    d^1 z/dt^1 = f,   d^2 z/dt^2 = df/dt + (df/dz) f,   ...,
    d^{K} z/dt^{K} = d^{K-1}/dt^{K-1} f(t, z(t)),

the quantity TayNODE regularises (Kelly, Bettencourt, Johnson, Duvenaud, "Learning
differential equations that are easy to solve", NeurIPS 2020).  `total_derivative`
computes it in one of two ways (`TAYLOR_METHODS`; ``auto`` picks ``jvp`` for K <= 3 and
``jet`` above).

``jet``: Taylor-mode AD (`jax.experimental.jet`) by the usual recursion: with the input
series t(s) = t + s (derivative coefficients [1, 0, 0, ...]) and
z(s) = z + sum_k z_k s^k / k!, the k-th derivative coefficient of f(t(s), z(s))
depends only on z_1, ..., z_k, and it *is* z_{k+1}; so K - 1 jets of orders
1, ..., K - 1, each fed the coefficients found so far, give z_K.

`jet` and custom derivative rules.  In the JAX of this project (0.10.2) `jet` fails
with ``UnexpectedTracerError`` on every function with a `jax.custom_jvp` rule
(`jax.nn.relu`, the project's convolution `jaxode.nn.conv` and its GroupNorm
`jaxode.nn.layers.GroupNorm`): its handler evaluates the primal body outside the jet
trace (jax-ml/jax#30352, fix proposed in jax-ml/jax#40747).  `jet` means to ignore
custom rules anyway and differentiate the primal body, so `_inline` does exactly that
before `jet` sees the function: it traces the field to a jaxpr and evaluates it with
every custom-JVP/VJP call and nested jit replaced by its primal body.  The values are
those of the field itself; only the custom rules' speed is lost inside the Taylor
term (XLA:CPU's fast convolution layouts in its reverse pass, for instance).

``jvp``: nested forward-mode products, g_1 = f and g_{k+1}(t, z) = dg_k/dt +
(dg_k/dz) f(t, z) = ``jax.jvp(g_k, (t, z), (1, f(t, z)))``, so that g_K = d^K z/dt^K.
For K = 2 this is the order-1 jet itself; its cost doubles with each further order,
but it keeps the layers' custom JVP rules, which the backsolve adjoint then
differentiates in XLA:CPU's fast layouts.  A training step of the MNIST ODE-Net
(batch 32, loaded 2-core CPU) took 2.4 s with ``jvp`` against 9.0 s with ``jet`` at
K = 2, and 4.7 s against 14.7 s at K = 3, with the same values (docs/results/
regularizers.md, section TayNODE); hence ``auto``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.experimental.jet import jet
from jax.extend.core import ClosedJaxpr, Literal

TAYLOR_METHODS = ("auto", "jet", "jvp")
_AUTO_JVP_UP_TO = 3  # ``auto``: nested JVPs up to this order, jet above

# primitives whose primal body (a jaxpr parameter) `_inline` evaluates in their place
_BODY = {"custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "jit": "jaxpr", "pjit": "jaxpr",
         "closed_call": "call_jaxpr", "core_call": "call_jaxpr"}


def _eval_inlined(closed: ClosedJaxpr, *args):
    """Evaluate `closed` on `args` (in the current trace), custom-derivative calls and
    nested jits replaced by their primal bodies."""
    jaxpr = closed.jaxpr
    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        body = _BODY.get(eqn.primitive.name)
        if body is not None and body in eqn.params:
            sub = eqn.params[body]
            outs = _eval_inlined(sub if isinstance(sub, ClosedJaxpr) else ClosedJaxpr(sub, ()), *ins)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _inline(fn, t, z):
    """``g(t, *leaves(z)) -> leaves(fn(t, z))`` with custom rules inlined, and the
    output's tree structure."""
    leaves, treedef = jtu.tree_flatten(z)
    flat = lambda t_, *xs: fn(t_, jtu.tree_unflatten(treedef, xs))
    closed, out_shape = jax.make_jaxpr(flat, return_shape=True)(t, *leaves)
    return (lambda *xs: _eval_inlined(closed, *xs)), jtu.tree_structure(out_shape)


def total_derivative(fn, t, z, order: int, method: str = "auto"):
    """``(f(t, z), d^K z/dt^K)`` along the solution of dz/dt = fn(t, z) through (t, z),
    K = `order` >= 1 (a Python int), by `method` (``auto``, ``jet`` or ``jvp``; module
    docstring).  `z` may be any PyTree of arrays; `t` a scalar.  K = 1 returns
    ``(f, f)``."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"total_derivative: order must be an int >= 1, got {order!r}.")
    if method not in TAYLOR_METHODS:
        raise ValueError(f"total_derivative: unknown method {method!r}; choose one of "
                         f"{', '.join(TAYLOR_METHODS)}.")
    t = jnp.asarray(t)
    f = fn(t, z)
    if order == 1:
        return f, f
    if method == "jvp" or (method == "auto" and order <= _AUTO_JVP_UP_TO):
        return f, _by_nested_jvp(fn, t, z, f, order)
    return f, _by_jet(fn, t, z, f, order)


def _by_nested_jvp(fn, t, z, f, order):
    def next_order(g):
        return lambda t_, z_: jax.jvp(g, (t_, z_), (jnp.ones_like(t_), fn(t_, z_)))[1]

    g = fn
    for _ in range(order - 2):
        g = next_order(g)
    # the last product's direction is (1, f(t, z)), already at hand
    return jax.jvp(g, (t, z), (jnp.ones_like(t), f))[1]


def _by_jet(fn, t, z, f, order):
    g, out_tree = _inline(fn, t, z)
    primals = (t, *jtu.tree_leaves(z))
    series = [jtu.tree_leaves(f)]  # series[k - 1]: the leaves of d^k z/dt^k
    for k in range(1, order):
        t_terms = [jnp.ones_like(t)] + [jnp.zeros_like(t)] * (k - 1)
        z_terms = [[s[i] for s in series] for i in range(len(primals) - 1)]
        _, out_terms = jet(g, primals, (t_terms, *z_terms))
        # out_terms[leaf][j]: the (j + 1)-th derivative of f's leaf, i.e. of z^{(j + 2)}
        series = [series[0]] + [[leaf[j] for leaf in out_terms] for j in range(k)]
    return jtu.tree_unflatten(out_tree, series[-1])
