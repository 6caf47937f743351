"""Regularisers of the dynamics (kinetic, jacobian, local_error) in the ODE core (their
use in the trainer: tests/test_train_regularize.py).

Closed forms for dz/dt = a z, z(0) = z0 on [0, T] (z(t) = z0 e^{at}):

    kinetic  = int_0^T (a z0 e^{at})^2 dt = a^2 z0^2 (e^{2aT} - 1) / (2a),
    jacobian = int_0^T a^2 dt = a^2 T   (exact with a Rademacher probe in 1-D).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fields import MatrixLinear as Matrix
from fields import ScalarLinear as Linear

from jaxode.ode import ODEBlock, SolveConfig

A, Z0, T = 0.7, 1.3, 1.5
KEY = jax.random.PRNGKey(0)


def kinetic_exact(a, z0, t):
    return a**2 * z0**2 * (np.exp(2 * a * t) - 1) / (2 * a)


def _regs(adjoint, names=("kinetic", "jacobian"), tol=1e-9, **kw):
    cfg = SolveConfig(rtol=tol, atol=tol, adjoint=adjoint, regularizers=names, **kw)

    def value(a, z0):
        _, stats = ODEBlock(Linear(a), 0.0, T, cfg)(jnp.reshape(z0, (1,)), key=KEY)
        return stats

    return value


@pytest.mark.parametrize("adjoint", ["backsolve", "checkpoint"])
def test_closed_forms_and_gradients(x64, adjoint):
    """Values against the closed forms; gradients in a and z0 against central finite
    differences of the solve and against the closed forms' derivatives."""
    value = _regs(adjoint)

    @jax.jit
    def loss(a, z0):
        s = value(a, z0)
        return s.kinetic + 3.0 * s.jacobian, s

    (_, stats), (g_a, g_z0) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        jnp.asarray(A), jnp.asarray(Z0))
    np.testing.assert_allclose(stats.kinetic, kinetic_exact(A, Z0, T), rtol=1e-7)
    np.testing.assert_allclose(stats.jacobian, A**2 * T, rtol=1e-9)
    assert stats.local_error is None
    h = 1e-5
    fd = lambda da, dz: (loss(A + da, Z0 + dz)[0] - loss(A - da, Z0 - dz)[0]) / (2 * h)
    np.testing.assert_allclose(g_a, fd(h, 0.0), rtol=1e-6)
    np.testing.assert_allclose(g_z0, fd(0.0, h), rtol=1e-6)
    e = np.exp(2 * A * T)
    d_kin_a = Z0**2 * (e - 1) / 2 + A * Z0**2 * T * e  # kinetic = a z0^2 (e^{2aT} - 1) / 2
    np.testing.assert_allclose(g_a, d_kin_a + 3.0 * 2 * A * T, rtol=1e-6)
    np.testing.assert_allclose(g_z0, 2 * Z0 * A**2 * (e - 1) / (2 * A), rtol=1e-6)


def test_batches_time_gradient_and_no_extra_steps(x64):
    """joint: the batch mean; per_sample: one value per example; dK/dt1 = ||f(t1)||^2;
    the regularisers change no step, and without them SolveStats has None."""
    z0s = jnp.asarray([[0.5], [1.0], [-2.0]])
    cfg = SolveConfig(rtol=1e-8, atol=1e-8, regularizers=("kinetic",))
    field = Linear(jnp.asarray(A))

    @jax.jit
    def run(t1):
        joint = ODEBlock(field, 0.0, t1, cfg).batched(z0s)[1]
        per = ODEBlock(field, 0.0, t1, cfg.replace(batch_mode="per_sample")).batched(z0s)[1]
        plain = ODEBlock(field, 0.0, t1, cfg.replace(regularizers=())).batched(z0s)[1]
        assert plain.kinetic is None and plain.jacobian is None and plain.local_error is None
        return joint.kinetic, (per.kinetic, joint.steps, plain.steps)

    (joint, (per, steps, plain_steps)), d_t1 = jax.value_and_grad(run, has_aux=True)(jnp.asarray(T))
    want = kinetic_exact(A, np.asarray([0.5, 1.0, -2.0]), T)
    np.testing.assert_allclose(per, want, rtol=1e-6)
    np.testing.assert_allclose(joint, want.mean(), rtol=1e-6)
    np.testing.assert_allclose(d_t1, np.mean((A * np.asarray([0.5, 1.0, -2.0]) * np.exp(A * T)) ** 2),
                               rtol=1e-6)
    assert int(steps) == int(plain_steps)


M3 = np.asarray([[0.3, -1.0, 0.2], [0.5, 0.1, 0.0], [-0.4, 0.7, -0.2]])  # not symmetric


@pytest.mark.parametrize("product", ["jvp", "vjp"])
def test_hutchinson_is_unbiased_for_a_matrix(x64, product):
    """E ||M eps||^2 T (jvp) = E ||eps^T M||^2 T (vjp) = ||M||_F^2 T for both probes (a
    3-D linear field; one Euler step integrates the constant integrand exactly)."""
    m = jnp.asarray(M3)
    n = 4000
    for probe in ("rademacher", "gaussian"):
        cfg = SolveConfig(solver="euler", num_steps=1, batch_mode="per_sample",
                          regularizers=("jacobian",), jacobian_probe=probe,
                          jacobian_product=product)
        est = ODEBlock(Matrix(m), 0.0, 0.5, cfg).batched(jnp.ones((n, 3)), key=KEY)[1].jacobian
        exact = float(jnp.sum(m**2)) * 0.5
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / np.sqrt(n)
        assert float(est.std()) > 0.1 * exact  # a random estimate, not the exact value


def _first_two(z):
    """A mask keeping the first two of the three state components (module level: the
    augmented field is cached on it)."""
    return jnp.broadcast_to(jnp.asarray([1.0, 1.0, 0.0], z.dtype), z.shape)


@pytest.mark.parametrize("mask", [None, _first_two], ids=["whole", "masked"])
def test_jacobian_rate_for_every_rademacher_probe(x64, mask):
    """The integrand dJ/dt of the augmented field for dz/dt = M z, probe by probe:
    ||m * (M s)||^2 (jvp) and ||(m * s)^T M||^2 (vjp) for each of the 2^3 sign vectors
    s, one per example of a joint batch.  Over that set E[s s^T] = I exactly, so both
    means equal ||diag(m) M||_F^2 to rounding; the per-probe values of the two forms
    differ (M is not symmetric)."""
    from jaxode.ode import _regularize as reg

    signs = np.asarray([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], float)
    keep = np.ones(3) if mask is None else np.asarray([1.0, 1.0, 0.0])
    z = jnp.asarray(np.linspace(-1, 1, 24).reshape(8, 3))  # J = M whatever z is
    field = lambda t, z, args: z @ args[0].T  # noqa: E731  (batch of rows)
    y = reg.initial_state(z, ("jacobian",), joint_batch=True)
    rates = {}
    for product in ("jvp", "vjp"):
        aug = reg.augmented_field(field, ("jacobian",), True, mask, product)
        out = aug(0.0, y, (jnp.asarray(M3), (None, jnp.asarray(signs))))
        np.testing.assert_allclose(out.z, np.asarray(z) @ M3.T, rtol=1e-14)
        rates[product] = np.asarray(out.reg.jacobian)
    np.testing.assert_allclose(rates["jvp"], np.sum((keep * (signs @ M3.T)) ** 2, axis=1), rtol=1e-13)
    np.testing.assert_allclose(rates["vjp"], np.sum(((keep * signs) @ M3) ** 2, axis=1), rtol=1e-13)
    exact = np.sum((keep[:, None] * M3) ** 2)
    for product in ("jvp", "vjp"):
        np.testing.assert_allclose(rates[product].mean(), exact, rtol=1e-13)
    assert np.max(np.abs(rates["jvp"] - rates["vjp"])) > 0.1


class TanhField(eqx.Module):
    w: jax.Array

    def __call__(self, t, z):
        return jnp.tanh(self.w @ z)


@pytest.mark.parametrize("product", ["jvp", "vjp"])
def test_jacobian_gradient_matches_finite_differences(x64, product):
    """d J / d W for the nonlinear field f = tanh(W z) (3-D, a fixed probe), through
    the backsolve adjoint, against central finite differences of the solve in two
    entries of W."""
    w0 = jnp.asarray(M3)
    z0 = jnp.asarray([0.4, -0.8, 1.1])
    cfg = SolveConfig(rtol=1e-10, atol=1e-10, regularizers=("jacobian",),
                      jacobian_product=product)
    jac = jax.jit(lambda w: ODEBlock(TanhField(w), 0.0, 1.0, cfg)(z0, key=KEY)[1].jacobian)
    grad = jax.jit(jax.grad(jac))(w0)
    assert float(jac(w0)) > 0.1
    h = 1e-5
    for i, j in ((0, 1), (2, 0)):
        e = jnp.zeros((3, 3)).at[i, j].set(h)
        fd = (jac(w0 + e) - jac(w0 - e)) / (2 * h)
        np.testing.assert_allclose(grad[i, j], fd, rtol=1e-6, atol=1e-9)


def test_local_error(x64):
    """Positive, smaller at tighter tolerances, with a finite nonzero gradient
    (checkpoint adjoint; one compiled function: tolerances are arrays)."""

    @eqx.filter_jit
    def run(cfg, a):
        one = lambda a_: ODEBlock(Linear(a_), 0.0, T, cfg)(jnp.asarray([Z0]))[1].local_error
        return jax.value_and_grad(one)(a)

    cfg = SolveConfig(adjoint="checkpoint", regularizers=("local_error",))
    values = []
    for tol in (1e-3, 1e-5, 1e-7):
        v, g = run(cfg.replace(rtol=tol, atol=tol), jnp.asarray(A))
        assert v > 0 and np.isfinite(g) and g != 0
        values.append(float(v))
    assert values[0] > values[1] > values[2]


def test_bad_input_errors():
    with pytest.raises(ValueError, match="unknown regularizer 'kinetik'"):
        SolveConfig(regularizers=("kinetik",))
    with pytest.raises(TypeError, match="tuple of names"):
        SolveConfig(regularizers="kinetic")
    with pytest.raises(ValueError, match="repeat"):
        SolveConfig(regularizers=("kinetic", "kinetic"))
    with pytest.raises(ValueError, match="unknown jacobian_probe"):
        SolveConfig(regularizers=("jacobian",), jacobian_probe="uniform")
    with pytest.raises(ValueError, match="unknown jacobian_product 'jacfwd'"):
        SolveConfig(regularizers=("jacobian",), jacobian_product="jacfwd")
    with pytest.raises(ValueError, match="adjoint='checkpoint' or 'direct'"):
        SolveConfig(regularizers=("local_error",))
    with pytest.raises(ValueError, match="adaptive solver"):
        SolveConfig(solver="rk4", num_steps=4, adjoint="checkpoint", regularizers=("local_error",))
    block = ODEBlock(Linear(jnp.asarray(1.0)), config=SolveConfig(regularizers=("jacobian",)))
    with pytest.raises(ValueError, match="needs a key"):
        block(jnp.ones(1))


