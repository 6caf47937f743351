"""Continuous normalizing flows (Chen et al. 2018, Sec. 4; FFJORD-style, exact trace),
with fixed or evolving weights (He, Xie, Lin 2019, Sec. 4.3).

A flow maps a data point x = z(t0) to z(t1) by dz/dt = f(t, z).  By the
instantaneous change of variables,

    d log p(z(t)) / dt = -tr(df/dz(t)),

so, with delta(t) = -int_{t0}^{t} tr(df/dz) ds integrated beside z from delta(t0) = 0,

    log p_x(x) = log N(z(t1); 0, I) - delta(t1).

`CNFField` turns any field f(t, z) on vectors z in R^D into the joint field
``(z, delta) -> (f, -tr df/dz)``; the trace is exact (D forward-mode Jacobian
columns), which is the right choice for the low-dimensional densities of the papers.
`CNF` wraps either an `ODEBlock` over a `CNFField` (fixed weights) or an `EvolvingODE`
whose base field is a `CNFField` (weights evolve by dtheta/dt = g; the same identity
holds because theta(t) does not depend on z).  `ConcatMLP` is the small MLP field used
by the 2-D flows and the curve fit (t enters every layer as an extra input).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock

__all__ = ["ConcatMLP", "CNFField", "CNF", "standard_normal_logpdf"]


class ConcatMLP(eqx.Module):
    """f(t, z) = L_n(t, act(... act(L_1(t, z)))), where L_i(t, h) = W_i [h; t] + b_i.

    **Arguments:** `dim` (in = out size), `hidden` (units per hidden layer), `depth`
    (number of hidden layers), `activation` (tanh by default; ReLU for the curve fit
    of He et al. Sec. 4.1), `key`.
    """

    layers: tuple
    activation: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int, hidden: int, depth: int = 2, *,
                 activation: Callable = jnp.tanh, key):
        if depth < 1 or hidden < 1 or dim < 1:
            raise ValueError(
                f"ConcatMLP: dim, hidden and depth must be positive, got {dim}, {hidden}, {depth}."
            )
        sizes = [dim] + [hidden] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a + 1, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = activation
        self.dim = dim

    def __call__(self, t, z):
        if z.shape != (self.dim,):
            raise ValueError(
                f"ConcatMLP expects one example of shape ({self.dim},), got {z.shape}; vmap over a batch."
            )
        tt = jnp.reshape(jnp.asarray(t, z.dtype), (1,))
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(jnp.concatenate([h, tt]))
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h


class CNFField(eqx.Module):
    """``(z, delta) -> (f(t, z), -tr(df/dz))``: the instantaneous change of variables
    (Chen et al. 2018, Theorem 1) with the exact trace of the Jacobian."""

    field: eqx.Module

    def __call__(self, t, state):
        z, _ = state
        if z.ndim != 1:
            raise ValueError(
                f"CNFField expects one example z of shape (D,), got {z.shape}; batch with "
                "ODEBlock.batched / CNF.log_prob_batched."
            )
        fz = lambda x: self.field(t, x)  # noqa: E731
        dz = fz(z)
        jac = jax.jacfwd(fz)(z)
        return dz, -jnp.trace(jac)


def standard_normal_logpdf(z):
    """log N(z; 0, I) of one vector z."""
    d = z.shape[-1]
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * d * jnp.log(jnp.asarray(2 * jnp.pi, z.dtype))


class _Reversed(eqx.Module):
    """s -> -F(t0 + t1 - s, state): runs a field backwards over [t0, t1]."""

    field: eqx.Module
    t0: jax.Array
    t1: jax.Array

    def __call__(self, s, state):
        t = (self.t0 + self.t1 - s).astype(jnp.result_type(s))
        return jtu.tree_map(jnp.negative, self.field(t, state))


class CNF(eqx.Module):
    """A continuous normalizing flow with a standard-normal base at t1.

    **Arguments:** `ode`: an `ODEBlock` whose field is a `CNFField` (fixed weights)
    or an `EvolvingODE` whose base field is a `CNFField` (NODE-EW).

    - ``log_prob(x)``: log p(x) of one point; ``log_prob_batched(xs)`` of a batch.
    - ``sample(key, n)``: n samples by integrating from t1 back to t0, with their
      log-density (from the same solve).
    """

    ode: eqx.Module

    def __init__(self, ode):
        field = ode.block.field.rest if isinstance(ode, EvolvingODE) else getattr(ode, "field", None)
        if not isinstance(field, CNFField):
            raise TypeError(
                "CNF: pass an ODEBlock over a CNFField or an EvolvingODE whose base field is a "
                f"CNFField, got a field of type {type(field).__name__}."
            )
        self.ode = ode

    @property
    def evolving(self) -> bool:
        return isinstance(self.ode, EvolvingODE)

    def _finish(self, z, delta):
        return standard_normal_logpdf(z) - delta

    def log_prob(self, x):
        zero = jnp.zeros((), x.dtype)
        if self.evolving:
            ((z, delta), _), stats = self.ode((x, zero))
        else:
            (z, delta), stats = self.ode((x, zero))
        return self._finish(z, delta), stats

    def log_prob_batched(self, xs):
        zeros = jnp.zeros(xs.shape[:1], xs.dtype)
        if self.evolving:
            ((z, delta), _), stats = self.ode.batched((xs, zeros))
        else:
            (z, delta), stats = self.ode.batched((xs, zeros))
        return self._finish(z, delta), stats

    @eqx.filter_jit
    def sample(self, key, n: int, dim: int = 2, dtype=jnp.float32):
        """n samples x = z(t0) from z(t1) ~ N(0, I), and log p(x).  Integrates the
        reversed joint field as one batch (forward-mode solve: no gradients needed)."""
        block = self.ode.block if self.evolving else self.ode
        z1 = jax.random.normal(key, (n, dim), dtype)
        logp1 = standard_normal_logpdf(z1)
        config = block.config.replace(adjoint="direct", seminorm=False, batch_mode="joint")
        if self.evolving:
            theta1 = jtu.tree_map(lambda x: x[-1], self.ode.weights_at(jnp.reshape(block.t1, (1,))))
            field = dataclasses.replace(block.field, batch=True)  # theta shared by the batch
            rev = ODEBlock(_Reversed(field, block.t0, block.t1), block.t0, block.t1, config,
                           name="cnf_sample")
            ((x, delta), _), _ = rev(((z1, jnp.zeros_like(logp1)), theta1))
        else:
            rev = ODEBlock(_Reversed(block.field, block.t0, block.t1), block.t0, block.t1, config,
                           name="cnf_sample")
            (x, delta), _ = rev.batched((z1, jnp.zeros_like(logp1)))
        # Backwards, delta accumulates +int tr(df/dz): log p(x) = log N(z1) + that.
        # (_Reversed negates both parts, so the state's second part is -(-tr) integrated.)
        return x, logp1 + delta
