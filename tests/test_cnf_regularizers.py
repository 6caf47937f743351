"""RNODE's regularisers on a CNF measure dz/dt only (`CNFField.regularized_mask`), and
the benchmark `benchmarks.cnf_regularizers` runs end to end (--smoke)."""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.linalg import expm

from jaxode.fields.cnf import CNFField
from jaxode.ode import ODEBlock, SolveConfig

A = np.array([[-0.6, 0.9], [-0.4, 0.3]], np.float32)  # tr A != 0: the log p part moves
T = 1.5


class LinearField(eqx.Module):
    a: jax.Array

    def __call__(self, t, z):
        return self.a @ z


@pytest.mark.parametrize("product", ["jvp", "vjp"])
def test_cnf_kinetic_and_jacobian_closed_form(product):
    """dz/dt = A z: K = int_0^T ||A expm(tA) z0||^2 dt (quadrature, scipy) and, for a
    Rademacher probe eps, J = T ||A eps||^2 (jvp) or T ||eps^T A||^2 (vjp), whose two
    values (eps = +-(1, 1), +-(1, -1)) average to T ||A||_F^2.  The log-density part
    (d delta/dt = -tr A) would add T tr(A)^2 to K if it were counted."""
    z0 = np.array([0.7, -1.2], np.float32)
    config = SolveConfig(rtol=1e-7, atol=1e-7, regularizers=("kinetic", "jacobian"),
                         jacobian_product=product)
    block = ODEBlock(CNFField(LinearField(jnp.asarray(A))), 0.0, T, config)
    kinetic = quad(lambda t: float(np.sum((A @ expm(t * A) @ z0) ** 2)), 0, T, epsabs=1e-12)[0]
    times = (lambda s: A @ s) if product == "jvp" else (lambda s: s @ A)
    values = {T * float(np.sum(times(np.array(s, np.float32)) ** 2)) for s in ((1, 1), (1, -1))}
    solve = eqx.filter_jit(lambda b, key: b((jnp.asarray(z0), jnp.zeros(())), key=key))
    seen = set()
    for i in range(8):
        (z1, delta), stats = solve(block, jax.random.PRNGKey(i))
        np.testing.assert_allclose(z1, expm(T * A) @ z0, rtol=1e-4)
        np.testing.assert_allclose(delta, -T * np.trace(A), rtol=1e-4)
        np.testing.assert_allclose(stats.kinetic, kinetic, rtol=1e-4)
        match = [v for v in values if abs(float(stats.jacobian) - v) < 1e-4 * v]
        assert match, (float(stats.jacobian), values)
        seen.add(match[0])
    assert seen == values  # both probes drawn in 8 keys (a 1/128 chance to miss: fixed keys)
    np.testing.assert_allclose(np.mean(sorted(values)), T * np.sum(A**2), rtol=1e-6)


def test_cnf_regularizers_smoke(tmp_path):
    from benchmarks.cnf_regularizers import main

    out = str(tmp_path / "cnf_reg")
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes dtypes
        summary = main(["--out", out, "--smoke"])
    for name in ("iters.csv", "evals.csv", "summary.md", "cnf_regularizers.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)["summary"]["moons"]
    assert set(saved) == {"none", "rnode=0.1"} and saved["none"]["equal_nll"]["iter"] == 4
    assert np.isfinite(summary["moons"]["rnode=0.1"]["test_nll"])
