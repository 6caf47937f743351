"""Continuous normalizing flows (fixed and evolving weights).

Truths used: the analytic change of variables of a linear flow (z(1) = expm(A) x,
log p(x) = log N(expm(A) x) + log|det expm(A)|), the normalisation of a density
(its integral over the plane is 1), and for the Hutchinson trace the explicit
Jacobian (eps^T J eps, its mean tr J and its Rademacher variance
(1/2) sum_{i != j} (J_ij + J_ji)^2) and the exact-trace log-density.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.stats as jss
import numpy as np
import pytest
from fields import MatrixLinear as Linear

from jaxode.fields.cnf import CNF, CNFField, ConcatMLP, sample_probe
from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock, SolveConfig


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


class Shifted(eqx.Module):
    """f(t, z) = mlp(t, z) + a z: an MLP field whose Jacobian has a clear trace."""

    mlp: ConcatMLP
    a: float = 0.3

    def __call__(self, t, z):
        return self.mlp(t, z) + self.a * z


def _mlp16():
    """A small D = 16 tanh field with a non-symmetric Jacobian and tr J of O(5)."""
    mlp = ConcatMLP(16, 24, 1, key=jax.random.PRNGKey(11))
    return Shifted(jax.tree_util.tree_map(lambda x: 1.5 * x if eqx.is_inexact_array(x) else x, mlp))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_eps_J_eps_and_unbiased(probe):
    field = CNFField(_mlp16())
    t, z = 0.3, jax.random.normal(jax.random.PRNGKey(12), (16,), jnp.float32)
    J = jax.jacfwd(lambda x: field.field(t, x))(z)
    n = 20000
    eps = sample_probe(jax.random.PRNGKey(13), (n, 16), probe)

    @jax.jit
    def estimates(eps):
        return jax.vmap(lambda e: -field(t, (z, jnp.zeros(()), e))[1])(eps)

    est = np.asarray(estimates(eps), np.float64)
    # per probe: exactly eps^T J eps of the explicit Jacobian
    np.testing.assert_allclose(est, np.einsum("ni,ij,nj->n", eps, J, eps), rtol=1e-4, atol=1e-4)
    # unbiased: the mean is within 4 standard errors of tr J (a biased estimator, e.g.
    # probes of variance 1.2 or a missing diagonal, sits many standard errors away)
    tr, se = float(jnp.trace(J)), est.std(ddof=1) / np.sqrt(n)
    assert abs(est.mean() - tr) < 4 * se, (est.mean(), tr, se)
    assert 0.2 * abs(tr) > 10 * se  # the check can tell a 20% bias apart
    Jn = np.asarray(J, np.float64)
    if probe == "rademacher":  # Var = (1/2) sum_{i != j} (J_ij + J_ji)^2, no diagonal part
        S = Jn + Jn.T
        var = 0.5 * (np.sum(S**2) - np.sum(np.diag(S) ** 2))
    else:  # Gaussian: Var = (1/2) ||J + J^T||_F^2
        var = 0.5 * np.sum((Jn + Jn.T) ** 2)
    np.testing.assert_allclose(est.var(ddof=1), var, rtol=0.08)


def test_hutchinson_log_density_averages_to_the_exact_one_in_16d():
    mlp = _mlp16()
    # fixed rk4 steps: z(t) and the steps do not depend on eps, so the Hutchinson
    # log-density is exactly linear in eps eps^T and its mean is the exact-trace one
    cfg = SolveConfig(solver="rk4", num_steps=10, adjoint="direct")
    exact = CNF(ODEBlock(CNFField(mlp), 0.0, 1.0, cfg))
    hutch = exact.with_trace("hutchinson")
    assert hutch.hutchinson and not exact.hutchinson
    x = 0.8 * jax.random.normal(jax.random.PRNGKey(14), (16,), jnp.float32)
    k = 4000  # probes, one per copy of x, in one joint-batch solve
    logp_exact, _ = eqx.filter_jit(exact.log_prob)(x)
    logp_h, _ = eqx.filter_jit(hutch.log_prob_batched)(jnp.tile(x, (k, 1)),
                                                       key=jax.random.PRNGKey(15))
    logp_h = np.asarray(logp_h, np.float64)
    se = logp_h.std(ddof=1) / np.sqrt(k)
    assert abs(logp_h.mean() - float(logp_exact)) < 4 * se + 1e-3, (logp_h.mean(), logp_exact, se)
    # the estimator really is random (one probe per example) and the flow is far from
    # the identity (so a dropped trace term would fail)
    assert logp_h.std() > 0.05
    base = float(jss.norm.logpdf(x).sum())
    assert abs(float(logp_exact) - base) > 20 * se
    with pytest.raises(ValueError, match="key"):
        hutch.log_prob(x)
