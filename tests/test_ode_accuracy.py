"""Accuracy of every solver of the ODE core against an exact solution, in float64.

The truth is the linear system dz/dt = A z, whose solution is z(t) = expm(t A) z0
(scipy.linalg.expm, independent of JAX).  Fixed-step solvers must show their order
when the step is halved; adaptive ones must track their tolerance.  Changing the
tolerances or t1 of a jitted solve must not retrace it.
"""

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from fields import MatrixLinear as Linear

from jaxode.ode import ODEBlock, SolveConfig

# A fixed, non-normal 4x4 matrix with complex eigenvalues (rotation + decay + shear).
A_NP = np.array(
    [
        [-0.5, 1.0, 0.2, 0.0],
        [-1.0, -0.3, 0.0, 0.4],
        [0.1, 0.0, -0.2, 0.8],
        [0.0, -0.3, -0.8, -0.1],
    ]
)
Z0_NP = np.array([1.0, -0.5, 0.3, 0.7])
T1 = 1.0
ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}


def _truth(t):
    return scipy.linalg.expm(t * A_NP) @ Z0_NP


@pytest.fixture(scope="module")
def linear(x64):
    return Linear(jnp.asarray(A_NP)), jnp.asarray(Z0_NP)


@pytest.fixture(scope="module")
def solve_counted():
    """A jitted solve that records each trace (a Python side effect runs only when
    JAX traces, i.e. (re)compiles)."""
    traces = []

    @eqx.filter_jit
    def solve(block, z0):
        traces.append(1)
        return block(z0)

    return solve, traces


@pytest.mark.parametrize("solver", sorted(ORDERS))
def test_fixed_step_order_and_error_bound(linear, solver):
    """Halving h divides the error by ~2^p, and the error obeys the analytic bound.

    For dz/dt = A z, an explicit RK method with p = s stages (Euler, midpoint, RK4)
    multiplies z by the degree-p Taylor polynomial R(hA) of expm(hA) per step, so
    |R(hA) - expm(hA)| <= (|hA|^{p+1} / (p+1)!) e^{|hA|} and over N steps
    |z_N - z(T)| <= N (|hA|^{p+1} / (p+1)!) e^{|hA|} e^{|A| T} |z0|.
    """
    field, z0 = linear
    p = ORDERS[solver]
    norm_a = np.linalg.norm(A_NP, 2)
    truth = _truth(T1)
    errors = []
    for n in (8, 16):
        block = ODEBlock(field, 0.0, T1, SolveConfig(solver=solver, num_steps=n))
        z, stats = block(z0)
        assert z.dtype == jnp.float64
        assert int(stats.steps) == n
        err = float(np.linalg.norm(np.asarray(z) - truth))
        h = T1 / n
        bound = (
            n * (norm_a * h) ** (p + 1) / math.factorial(p + 1)
            * math.exp(norm_a * h) * math.exp(norm_a * T1) * np.linalg.norm(Z0_NP)
        )
        assert err <= bound, (solver, n, err, bound)
        errors.append(err)
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - p) < 0.3, (solver, errors, observed)


@pytest.mark.parametrize("solver", ["dopri5", "tsit5", "bosh3"])
def test_adaptive_error_follows_tolerance(linear, solve_counted, solver):
    """z(1) matches expm(A) z0 within a small multiple of the tolerance, the error
    shrinks as the tolerance does, and sweeping the tolerance (an array) reuses one
    compilation."""
    field, z0 = linear
    solve, traces = solve_counted
    truth = _truth(T1)
    block = ODEBlock(field, 0.0, T1, SolveConfig(solver=solver, rtol=1e-4, atol=1e-4))
    counts = []
    errors = {}
    steps = {}
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        # Two ways of changing a tolerance: a new config, or a new array leaf.
        cfg = block.config.replace(rtol=tol, atol=tol)
        b = eqx.tree_at(lambda b: b.config, block, cfg)
        z, stats = solve(b, z0)
        b2 = eqx.tree_at(lambda b: b.config.rtol, b, jnp.asarray(tol, jnp.float64))
        z2, _ = solve(b2, z0)
        counts.append(len(traces))
        np.testing.assert_array_equal(np.asarray(z), np.asarray(z2))
        errors[tol] = float(np.max(np.abs(np.asarray(z) - truth)))
        steps[tol] = int(stats.steps)
        # Global error of a tolerance-controlled solve over one time unit: a modest
        # multiple of the per-step tolerance (|z| <= 1.5 here).
        assert errors[tol] <= 20 * tol, (solver, tol, errors)
    # The first call traces once (or reuses an earlier dopri5 trace); no later call,
    # with other tolerances, may trace again.
    assert len(set(counts)) == 1, "changing rtol/atol recompiled the solve"
    # Tighter tolerance -> more steps and (much) smaller error.
    assert steps[1e-10] > steps[1e-6] > steps[1e-4]
    assert errors[1e-10] < 1e-3 * errors[1e-4]


def test_dense_output_and_t1_without_recompile(linear, solve_counted):
    """z at intermediate times `ts` (dense output) and a changed t1 (an array) both
    match expm(tA) z0; changing t1 reuses the compiled solve."""
    field, z0 = linear
    solve, traces = solve_counted
    cfg = SolveConfig(solver="dopri5", rtol=1e-10, atol=1e-10)
    block = ODEBlock(field, 0.0, T1, cfg)
    ts = jnp.asarray([0.1, 0.35, 0.7, 1.0])
    zs, _ = block(z0, ts=ts)
    assert zs.shape == (4, 4) and zs.dtype == jnp.float64
    for t, z in zip(np.asarray(ts), np.asarray(zs)):
        # 0.1 is not representable in float32: this also checks that times follow
        # the float64 state instead of being rounded to float32.
        np.testing.assert_allclose(z, _truth(t), rtol=0, atol=2e-9)

    counts = []
    for t1 in (0.5, 1.5, 2.0):
        z, _ = solve(eqx.tree_at(lambda b: b.t1, block, jnp.asarray(t1, jnp.float64)), z0)
        counts.append(len(traces))
        np.testing.assert_allclose(np.asarray(z), _truth(t1), rtol=0, atol=5e-9)
    # The first call may trace (or reuse the dopri5 trace of the tolerance test);
    # the later ones, with other t1 values, must not.
    assert counts[0] == counts[1] == counts[2], "changing t1 recompiled the solve"


def test_float32_state_keeps_float32(linear):
    """A float32 state gives a float32 output even with float64 times/tolerances."""
    field, z0 = linear
    field32 = Linear(field.A.astype(jnp.float32))
    z, _ = ODEBlock(field32, 0.0, T1, SolveConfig(rtol=1e-5, atol=1e-5))(z0.astype(jnp.float32))
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(z), _truth(T1), atol=1e-4)
