"""Solve statistics checked against an independent count of field evaluations.

The field calls a host counter through `jax.debug.callback` on every evaluation that
actually runs (inside jit, inside Diffrax's while loop, inside the backsolve adjoint's
backward solve), so the count does not rely on the NFE formula of `jaxode.ode`
(`_init_evals` + evaluations per step * steps) that `SolveStats.nfe` and
`backward_nfe` report.  (That checkpoint/direct report a zero backward NFE is
checked in test_ode_gradients.py.)
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.ode import ODEBlock, SolveConfig, backward_nfe

A_NP = np.array(
    [[-0.5, 1.0, 0.2, 0.0], [-1.0, -0.3, 0.0, 0.4], [0.1, 0.0, -0.2, 0.8], [0.0, -0.3, -0.8, -0.1]],
    np.float32,
)
Z0 = np.array([1.0, -0.5, 0.3, 0.7], np.float32)


class Counter:
    """A host-side tally (hashable by identity, so it can be a static field)."""

    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1


class CountingLinear(eqx.Module):
    """f(t, z) = tanh(A z), counting its evaluations on the host."""

    A: jax.Array
    counter: Counter = eqx.field(static=True)

    def __call__(self, t, z):
        jax.debug.callback(self.counter.add)
        return jnp.tanh(self.A @ z)


def _counted(fn):
    """Run `fn`, return (its result, number of field evaluations it made)."""
    counter = Counter()
    result = fn(counter)
    jax.block_until_ready(result)
    jax.effects_barrier()
    return result, counter.n


def _field(counter):
    return CountingLinear(jnp.asarray(A_NP), counter)


@pytest.mark.parametrize(
    "solver, kwargs",
    [
        ("dopri5", dict(rtol=1e-6, atol=1e-6)),
        ("tsit5", dict(rtol=1e-6, atol=1e-6)),
        ("bosh3", dict(rtol=1e-5, atol=1e-5)),
        ("euler", dict(num_steps=7)),
        ("midpoint", dict(num_steps=7)),
        ("rk4", dict(num_steps=7)),
    ],
)
def test_forward_nfe_matches_counted_evaluations(solver, kwargs):
    cfg = SolveConfig(solver=solver, **kwargs)

    def run(counter):
        block = ODEBlock(_field(counter), 0.0, 2.0, cfg)
        return block(jnp.asarray(Z0))

    (z, stats), counted = _counted(run)
    assert int(stats.accepted) + int(stats.rejected) == int(stats.steps)
    if cfg.adaptive:
        assert int(stats.steps) > 3
    else:
        assert int(stats.steps) == 7 and int(stats.rejected) == 0
    assert int(stats.nfe) == counted, (solver, int(stats.steps), int(stats.nfe), counted)


@pytest.mark.parametrize(
    "solver, kwargs",
    [("dopri5", dict(rtol=1e-6, atol=1e-6)), ("rk4", dict(num_steps=8))],
)
def test_backward_nfe_matches_counted_evaluations(solver, kwargs):
    """backward NFE = (evaluations during forward + backward) - forward NFE, over a
    dense-output loss whose first save time equals t0 (a zero-length interval that
    the backward pass must skip without evaluating the field)."""
    ts = jnp.asarray([0.0, 0.7, 2.0])
    cfg = SolveConfig(solver=solver, **kwargs)

    def run(counter):
        block = ODEBlock(_field(counter), 0.0, 2.0, cfg)

        def loss(b):
            zs, stats = b(jnp.asarray(Z0), ts=ts)
            return jnp.sum(zs[1] ** 2) + jnp.sum(zs[2]), stats

        return eqx.filter_jit(eqx.filter_grad(loss, has_aux=True))(block)

    (grads, stats), counted = _counted(run)
    bwd = int(backward_nfe(grads))
    assert bwd > 0
    assert bwd == counted - int(stats.nfe), (solver, bwd, counted, int(stats.nfe))
    if solver == "rk4":
        # Fixed step: the backward solve uses the forward's step size h = 2/8 on each
        # interval [0.7, 2] (6 steps, the last one clipped) and [0, 0.7] (3 steps),
        # plus f(t0, z0) for dL/dt0 (filter_grad differentiates the block's t0).
        assert bwd == 4 * (6 + 3) + 1
