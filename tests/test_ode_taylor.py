"""TayNODE's regulariser R_K = int ||d^K z/dt^K||^2 dt in the ODE core (``taylor``).

Closed forms:

- dz/dt = a z, z(0) = z0 on [0, T]: d^K z/dt^K = a^K z0 e^{at}, so
  R_K = a^{2K} z0^2 (e^{2aT} - 1) / (2a).
- dz/dt = t z (df/dt != 0): z = z0 e^{t^2/2}, d^2 z/dt^2 = (1 + t^2) z and
  d^3 z/dt^3 = (3t + t^3) z, integrated by scipy's quadrature.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fields import ScalarLinear as Linear
from scipy.integrate import quad

from jaxode.ode import ODEBlock, SolveConfig

A, Z0, T = 0.7, 1.3, 1.5


class TimeLinear(eqx.Module):
    """dz/dt = c t z."""

    c: jax.Array

    def __call__(self, t, z):
        return self.c * t * z


def linear_exact(a, z0, t, k):
    return a ** (2 * k) * z0**2 * (np.exp(2 * a * t) - 1) / (2 * a)


def test_total_derivative_matches_nested_jvp_on_the_project_fields():
    """(float32: first in the module, before the x64 fixture.)  The jet recursion (with
    the custom-JVP layers inlined) against nested `jax.jvp` (which uses those custom
    rules) on the project's fields: Chen's conv field (GroupNorm + the project's conv,
    ReLU) at K = 2 and a tanh ConcatMLP CNF state (z, log p) at K = 3; then a jitted
    regularised solve of the conv field against the integrand at t0 (one Euler step).
    (The gradient through the conv field is exercised by the training-step benchmark,
    benchmarks.jacobian_reg_cost: compiling it here would cost ~20 s.)"""
    from jaxode.fields.cnf import CNFField, ConcatMLP
    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.ode._taylor import total_derivative

    nested = lambda fn, t, z, k: total_derivative(fn, t, z, k, "jvp")[1]

    key = jax.random.PRNGKey(0)
    conv = ConvODEFunc(4, key=key)
    cnf = CNFField(ConcatMLP(2, 8, 2, key=key))
    cases = [(conv, jax.random.normal(key, (4, 5, 5)), 2),
             (cnf, (jnp.asarray([0.3, -0.5]), jnp.zeros(())), 3)]
    t = jnp.asarray(0.3)
    rates = []
    for fn, z, k in cases:
        both = lambda z_, fn=fn, k=k: (total_derivative(fn, t, z_, k, "jet")[1],
                                       nested(fn, t, z_, k))
        got, want = jax.jit(both)(z)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(b))))
        assert float(jnp.max(jnp.abs(jax.tree_util.tree_leaves(want)[0]))) > 1e-3
        rates.append(float(jnp.sum(jax.tree_util.tree_leaves(want)[0] ** 2)))

    # one Euler step of length 0.5 from (t, z): R_2 = 0.5 ||d^2 z/dt^2 (t, z)||^2
    cfg = SolveConfig(solver="euler", num_steps=1, regularizers=("taylor",))
    block = ODEBlock(conv, t, t + 0.5, cfg)
    z0s = jnp.stack([cases[0][1]] * 2)
    stats = eqx.filter_jit(lambda b, z: b.batched(z)[1])(block, z0s)
    np.testing.assert_allclose(stats.taylor, 0.5 * rates[0], rtol=1e-4)


def test_linear_closed_form_orders_1_to_4_and_batches(x64):
    """R_1 (= kinetic), R_2, R_3 (nested JVPs, ``auto``) and R_4 (jet, ``auto``) for
    dz/dt = a z in one jitted function; joint batch (mean) and per_sample (one per
    example); the regulariser changes no step."""
    z0s = jnp.asarray([[Z0], [-0.5]])
    want = linear_exact(A, np.asarray([Z0, -0.5]), T, 1)

    @jax.jit
    def run(a):
        out = {}
        for k in (1, 2, 3, 4):
            cfg = SolveConfig(rtol=1e-9, atol=1e-9, regularizers=("taylor", "kinetic"),
                              taylor_order=k)
            joint = ODEBlock(Linear(a), 0.0, T, cfg).batched(z0s)[1]
            out[k] = joint.taylor
        per_cfg = SolveConfig(rtol=1e-9, atol=1e-9, regularizers=("taylor",), taylor_order=2,
                              batch_mode="per_sample")
        per = ODEBlock(Linear(a), 0.0, T, per_cfg).batched(z0s)[1]
        plain = ODEBlock(Linear(a), 0.0, T, per_cfg.replace(regularizers=())).batched(z0s)[1]
        return out, joint.kinetic, per.taylor, per.steps, plain.steps, plain.taylor

    out, kinetic, per, steps, plain_steps, none = run(jnp.asarray(A))
    for k in (1, 2, 3, 4):
        np.testing.assert_allclose(out[k], (A ** (2 * (k - 1)) * want).mean(), rtol=1e-7)
    np.testing.assert_allclose(out[1], kinetic, rtol=1e-12)  # K = 1 is the kinetic energy
    np.testing.assert_allclose(per, A**2 * want, rtol=1e-7)
    np.testing.assert_array_equal(steps, plain_steps)
    assert none is None


def test_time_dependent_field_and_gradient(x64):
    """dz/dt = c t z: R_2, R_3 by both methods against quadrature of the closed form (a
    wrong time coefficient, e.g. 0 instead of 1, drops the df/dt = c z term and fails);
    dR_2/dc (jet) under the backsolve adjoint against central finite differences of the
    solve (one compiled function gives all of them)."""
    def r(c, k, method="jet"):
        cfg = SolveConfig(rtol=1e-10, atol=1e-10, regularizers=("taylor",), taylor_order=k,
                          taylor_method=method)
        return ODEBlock(TimeLinear(c), 0.0, T, cfg)(jnp.asarray([Z0]))[1].taylor

    run = jax.jit(lambda c: (jax.value_and_grad(lambda c_: r(c_, 2))(c),
                             (r(c, 3), r(c, 2, "jvp"), r(c, 3, "jvp"))))
    (r2, _), (r3, r2_jvp, r3_jvp) = run(jnp.asarray(1.0))
    z = lambda t: Z0 * np.exp(t**2 / 2)
    want2 = quad(lambda t: ((1 + t**2) * z(t)) ** 2, 0, T)[0]
    want3 = quad(lambda t: ((3 * t + t**3) * z(t)) ** 2, 0, T)[0]
    for got, want in ((r2, want2), (r3, want3), (r2_jvp, want2), (r3_jvp, want3)):
        np.testing.assert_allclose(got, want, rtol=1e-7)

    c0, h = 0.8, 1e-5
    grad = run(jnp.asarray(c0))[0][1]
    fd = (run(jnp.asarray(c0 + h))[0][0] - run(jnp.asarray(c0 - h))[0][0]) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    assert abs(float(grad)) > 1.0


def test_bad_order_and_method():
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="taylor_order must be an int >= 1"):
            SolveConfig(regularizers=("taylor",), taylor_order=bad)
    with pytest.raises(ValueError, match="unknown taylor_method 'taylor'"):
        SolveConfig(regularizers=("taylor",), taylor_method="taylor")
