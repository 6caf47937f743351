"""Continuous normalizing flows (fixed and evolving weights).

Truths used: the analytic change of variables of a linear flow (z(1) = expm(A) x,
log p(x) = log N(expm(A) x) + log|det expm(A)|), and the normalisation of a density
(its integral over the plane is 1).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.stats as jss
import numpy as np
import pytest

from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock, SolveConfig


class Linear(eqx.Module):
    A: jax.Array

    def __call__(self, t, z):
        return self.A @ z


def test_linear_flow_matches_change_of_variables():
    A = jnp.array([[0.3, -0.8], [0.5, -0.4]], jnp.float32) + jnp.array(
        [[0.6, 0.0], [0.0, 0.2]], jnp.float32)
    cnf = CNF(ODEBlock(CNFField(Linear(A)), 0.0, 1.0, SolveConfig(rtol=1e-7, atol=1e-7)))
    xs = jax.random.normal(jax.random.PRNGKey(0), (5, 2), jnp.float32) * 1.5
    logp, _ = eqx.filter_jit(cnf.log_prob_batched)(xs)
    E = jsl.expm(A)
    sign, logdet = jnp.linalg.slogdet(E)
    assert sign > 0
    z1 = xs @ E.T
    expected = jnp.sum(jss.norm.logpdf(z1), axis=-1) + logdet
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-5)
    # the trace term matters here: log|det| is far from 0
    assert abs(float(logdet)) > 0.3


@pytest.fixture(scope="module")
def evolving_flow():
    mlp = ConcatMLP(2, 16, 2, key=jax.random.PRNGKey(1))
    # stronger weights than the default init, so the flow bends space noticeably
    mlp = jax.tree_util.tree_map(lambda x: 2.0 * x if eqx.is_inexact_array(x) else x, mlp)
    ode = EvolvingODE(CNFField(mlp), "elementwise", 0.0, 1.0,
                      SolveConfig(rtol=1e-5, atol=1e-5), key=jax.random.PRNGKey(2),
                      init_scale=0.5)
    return CNF(ode)


def test_evolving_flow_density_integrates_to_one_and_sampling_inverts(evolving_flow):
    n, half = 64, 6.5
    grid = jnp.linspace(-half, half, n, dtype=jnp.float32)
    xx, yy = jnp.meshgrid(grid, grid)
    pts = jnp.stack([xx.ravel(), yy.ravel()], axis=1)
    samples, logp_samples = evolving_flow.sample(jax.random.PRNGKey(3), 8)
    assert samples.shape == (8, 2)
    # one compiled density evaluation for the grid and the samples together
    logp, _ = eqx.filter_jit(CNF.log_prob_batched)(evolving_flow, jnp.concatenate([pts, samples]))
    logp, logp_again = logp[:-8], logp[-8:]
    cell = float(grid[1] - grid[0]) ** 2
    total = float(jnp.sum(jnp.exp(logp)) * cell)
    assert abs(total - 1.0) < 0.02, total
    # not trivially the base density: the flow changes log p by O(1) somewhere
    base = jnp.sum(jss.norm.logpdf(pts), axis=-1)
    assert float(jnp.max(jnp.abs(logp - base)[jnp.abs(base) < 6])) > 0.3
    # sampling runs the joint (z, delta, theta) system backwards: same log-density
    np.testing.assert_allclose(logp_again, logp_samples, rtol=1e-3, atol=1e-3)


def test_cnf_rejects_a_plain_field():
    with pytest.raises(TypeError, match="CNFField"):
        CNF(ODEBlock(Linear(jnp.eye(2)), 0.0, 1.0))
