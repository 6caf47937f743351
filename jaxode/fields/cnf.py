"""Continuous normalizing flows (Chen et al. 2018, Sec. 4; FFJORD-style, exact trace),
with fixed or evolving weights (He, Xie, Lin 2019, Sec. 4.3).

A flow maps a data point x = z(t0) to z(t1) by dz/dt = f(t, z).  By the
instantaneous change of variables,

    d log p(z(t)) / dt = -tr(df/dz(t)),

so, with delta(t) = -int_{t0}^{t} tr(df/dz) ds integrated beside z from delta(t0) = 0,

    log p_x(x) = log N(z(t1); 0, I) - delta(t1).

`CNFField` turns any field f(t, z) on vectors z in R^D into the joint field
``(z, delta) -> (f, -tr df/dz)``.  Two traces (``CNF(ode, trace=...)``):

- ``"exact"``: tr(df/dz) from the D forward-mode Jacobian columns -- the right choice
  for the 2-D densities of the papers;
- ``"hutchinson"`` (FFJORD, Grathwohl et al. 2019): tr(J) = E[eps^T J eps] for any
  probe with E[eps eps^T] = I (Rademacher or Gaussian), so the estimate costs one
  vector-Jacobian product per evaluation instead of D Jacobian columns.  The probe is
  drawn once per solve and held fixed during it: it travels in the state,
  ``(z, delta, eps)`` with d eps/dt = 0, never resampled inside the field (the ODE
  solver needs one continuous field per solve).  `CNFField` picks the trace from the
  state it is given (two parts: exact, three: Hutchinson), so one field -- and, for
  NODE-EW, one theta structure -- serves both; `CNF` holds the choice.  The log-density is then an unbiased
  estimate, E_eps[log p_hat(x)] = log p(x), because log p is linear in the trace
  integral and z(t) does not depend on eps.
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

__all__ = ["ConcatMLP", "CNFField", "CNF", "standard_normal_logpdf", "hutchinson_trace",
           "sample_probe", "TRACES", "PROBES"]


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


TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


def sample_probe(key, shape, kind: str = "rademacher", dtype=jnp.float32):
    """A Hutchinson probe eps with E[eps] = 0, E[eps eps^T] = I: Rademacher (entries
    +-1 with probability 1/2, the lower-variance choice) or standard Gaussian."""
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    raise ValueError(f"unknown Hutchinson probe {kind!r}; choose one of {', '.join(PROBES)}.")


def hutchinson_trace(fn, z, eps):
    """``(fn(z), eps^T (dfn/dz) eps)``: the Hutchinson estimate of tr(dfn/dz) from one
    vector-Jacobian product, eps^T J, dotted with eps (FFJORD, eq. 7)."""
    dz, vjp = jax.vjp(fn, z)
    (eps_j,) = vjp(eps)
    return dz, jnp.vdot(eps_j, eps)


class CNFField(eqx.Module):
    """The instantaneous change of variables (Chen et al. 2018, Theorem 1):
    d log p(z(t))/dt = -tr(df/dz).

    - state ``(z, delta)`` -> ``(f(t, z), -tr(df/dz))``, the exact trace (D forward-mode
      Jacobian columns);
    - state ``(z, delta, eps)`` -> ``(f(t, z), -eps^T (df/dz) eps, 0)``, the Hutchinson
      estimate with the probe eps of this solve (one vector-Jacobian product).
    """

    field: eqx.Module

    def __call__(self, t, state):
        if len(state) not in (2, 3):
            raise ValueError(
                "CNFField expects the state (z, delta) (exact trace) or (z, delta, eps) "
                f"(Hutchinson trace), got {len(state)} parts."
            )
        z = state[0]
        if z.ndim != 1:
            raise ValueError(
                f"CNFField expects one example z of shape (D,), got {z.shape}; batch with "
                "ODEBlock.batched / CNF.log_prob_batched."
            )
        fz = lambda x: self.field(t, x)  # noqa: E731
        if len(state) == 3:
            # the probe is a constant of the solve: no adjoint flows into it
            eps = jax.lax.stop_gradient(state[2])
            dz, tr = hutchinson_trace(fz, z, eps)
            return dz, -tr, jnp.zeros_like(eps)
        dz = fz(z)
        jac = jax.jacfwd(fz)(z)
        return dz, -jnp.trace(jac)


    @staticmethod
    def regularized_mask(state):
        """The regularisers of the dynamics (`SolveConfig.regularizers`) measure z only:
        RNODE's kinetic energy int ||f||^2 dt and Jacobian norm int ||df/dz||_F^2 dt
        (Finlay et al. 2020) are of dz/dt, not of the log-density's or probe's parts."""
        return (jnp.ones_like(state[0]),) + tuple(jnp.zeros_like(s) for s in state[1:])


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
    or an `EvolvingODE` whose base field is a `CNFField` (NODE-EW); `trace`:
    ``"exact"`` or ``"hutchinson"``; `probe`: the Hutchinson probe's distribution,
    ``"rademacher"`` or ``"gaussian"`` (see `sample_probe`).

    - ``log_prob(x, key=None)``: log p(x) of one point; ``log_prob_batched(xs, key=None)``
      of a batch.  With a Hutchinson `CNFField` the `key` draws the probe of this solve
      (one probe per example) and the result is an unbiased estimate of log p.
    - ``sample(key, n)``: n samples by integrating from t1 back to t0, with their
      log-density (from the same solve).
    - ``with_trace("exact" | "hutchinson")``: the same flow with the other trace
      (e.g. train with Hutchinson, evaluate exactly).
    """

    ode: eqx.Module
    trace: str = eqx.field(static=True)
    probe: str = eqx.field(static=True)

    def __init__(self, ode, trace: str = "exact", probe: str = "rademacher"):
        if trace not in TRACES:
            raise ValueError(f"CNF: trace must be one of {TRACES}, got {trace!r}.")
        if probe not in PROBES:
            raise ValueError(f"CNF: probe must be one of {PROBES}, got {probe!r}.")
        self.trace, self.probe = trace, probe
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

    @property
    def hutchinson(self) -> bool:
        return self.trace == "hutchinson"

    def with_trace(self, trace: str, probe: str | None = None) -> "CNF":
        """The same flow (same arrays) with another trace / probe."""
        return CNF(self.ode, trace, self.probe if probe is None else probe)

    def _finish(self, z, delta):
        return standard_normal_logpdf(z) - delta

    def _initial(self, xs, key, batch_shape):
        """The initial CNF state: (x, 0) or, for Hutchinson, (x, 0, eps)."""
        zeros = jnp.zeros(batch_shape, xs.dtype)
        if not self.hutchinson:
            return (xs, zeros)
        if key is None:
            raise ValueError(
                "CNF: a Hutchinson-trace flow needs a PRNG `key` to draw its probe; pass "
                "key=..., or use cnf.with_trace('exact')."
            )
        return (xs, zeros, sample_probe(key, xs.shape, self.probe, xs.dtype))

    def _solve(self, state, batched):
        out, stats = (self.ode.batched if batched else self.ode)(state)
        if self.evolving:
            out, _ = out  # (CNF state, theta(t1))
        return self._finish(out[0], out[1]), stats

    def log_prob(self, x, key=None):
        return self._solve(self._initial(x, key, ()), batched=False)

    def log_prob_batched(self, xs, key=None):
        return self._solve(self._initial(xs, key, xs.shape[:1]), batched=True)

    @eqx.filter_jit
    def sample(self, key, n: int, dim: int = 2, dtype=jnp.float32):
        """n samples x = z(t0) from z(t1) ~ N(0, I), and log p(x).  Integrates the
        reversed joint field as one batch (forward-mode solve: no gradients needed).
        With a Hutchinson field the returned log p(x) is the one-probe estimate."""
        block = self.ode.block if self.evolving else self.ode
        kz, ke = jax.random.split(key) if self.hutchinson else (key, None)
        z1 = jax.random.normal(kz, (n, dim), dtype)
        logp1 = standard_normal_logpdf(z1)
        state = self._initial(z1, ke, (n,))
        config = block.config.replace(adjoint="direct", seminorm=False, batch_mode="joint")
        if self.evolving:
            theta1 = jtu.tree_map(lambda x: x[-1], self.ode.weights_at(jnp.reshape(block.t1, (1,))))
            field = dataclasses.replace(block.field, batch=True)  # theta shared by the batch
            rev = ODEBlock(_Reversed(field, block.t0, block.t1), block.t0, block.t1, config,
                           name="cnf_sample")
            (out, _), _ = rev((state, theta1))
        else:
            rev = ODEBlock(_Reversed(block.field, block.t0, block.t1), block.t0, block.t1, config,
                           name="cnf_sample")
            out, _ = rev.batched(state)
        # Backwards, delta accumulates +int tr(df/dz): log p(x) = log N(z1) + that.
        # (_Reversed negates both parts, so the state's second part is -(-tr) integrated.)
        return out[0], logp1 + out[1]
