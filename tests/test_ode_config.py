"""SolveConfig validation, `trainable`, running out of steps (forward and backward),
and the two batch modes of `ODEBlock.batched`.

The field is the linear system dz/dt = A z (float32 here), so exact solutions come
from scipy.linalg.expm.  One compiled function per (batch_mode, on_max_steps) pair is
reused across tolerances: the tolerance (an array) sets how many steps a solve needs
against a fixed, static max_steps.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from fields import MatrixLinear as Linear

from jaxode.ode import ODEBlock, SolveConfig, trainable

A_NP = np.array(
    [[-0.5, 1.0, 0.2, 0.0], [-1.0, -0.3, 0.0, 0.4], [0.1, 0.0, -0.2, 0.8], [0.0, -0.3, -0.8, -0.1]]
)
MAX_STEPS = 6
LOOSE, TIGHT = 1e-5, 1e-8  # LOOSE fits in MAX_STEPS for every sample; TIGHT not for all


# Two samples of different difficulty: with atol = rtol = tol, an error estimate is
# measured against atol + rtol |z|, so a tiny sample (error ~ its size) is easy and
# takes fewer steps than a unit one.
Z0S = np.stack([1e-4 * np.array([1.0, -0.5, 0.3, 0.7]), np.array([1.0, -0.5, 0.3, 0.7])]).astype(
    np.float32
)
TRUTH = Z0S @ scipy.linalg.expm(A_NP).T


def _block(batch_mode, on_max_steps, tol):
    cfg = SolveConfig(
        rtol=tol, atol=tol, max_steps=MAX_STEPS, batch_mode=batch_mode, on_max_steps=on_max_steps
    )
    return ODEBlock(Linear(jnp.asarray(A_NP, jnp.float32)), 0.0, 1.0, cfg, name="stem_ode")


@eqx.filter_jit
def _batched(block, z0s):
    return block.batched(z0s)


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(solver="rk45"), ["solver", "'rk45'", "dopri5"]),
        (dict(adjoint="adjoint"), ["adjoint", "'adjoint'", "backsolve"]),
        (dict(batch_mode="vmap"), ["batch_mode", "'vmap'", "per_sample"]),
        (dict(on_max_steps="warn"), ["on_max_steps", "'warn'", "flag"]),
        (dict(max_steps=0), ["max_steps", "0"]),
        (dict(max_steps=10.0), ["max_steps", "10.0"]),
        (dict(solver="dopri5", num_steps=10), ["dopri5", "num_steps"]),
        (dict(solver="rk4"), ["rk4", "num_steps", "dt"]),
        (dict(solver="rk4", num_steps=4, dt=0.1), ["num_steps", "dt"]),
        (dict(solver="euler", num_steps=0), ["num_steps", "0"]),
        (dict(solver="euler", num_steps=100, max_steps=10), ["num_steps", "max_steps=10"]),
        (dict(solver="euler", dt=-0.1), ["dt", "-0.1"]),
        (dict(adjoint="direct", seminorm=True), ["seminorm", "backsolve"]),
    ],
)
def test_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        SolveConfig(**kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_config_replace_validates_and_keeps_others():
    cfg = SolveConfig(solver="tsit5", rtol=1e-5, max_steps=77)
    new = cfg.replace(atol=1e-8)
    assert new.solver == "tsit5" and new.max_steps == 77
    np.testing.assert_allclose(float(new.rtol), 1e-5, rtol=1e-6)
    np.testing.assert_allclose(float(new.atol), 1e-8, rtol=1e-6)
    with pytest.raises(ValueError, match="solver"):
        cfg.replace(solver="nope")


def test_block_rejects_bad_inputs():
    block = _block("joint", "raise", LOOSE)
    with pytest.raises(TypeError, match="stem_ode"):
        block(jnp.arange(4))  # integer state
    with pytest.raises(ValueError, match="ts must be a non-empty 1-D"):
        block(jnp.ones(4), ts=jnp.ones((2, 2)))
    with pytest.raises(Exception, match="ts must lie between t0 and t1 and run monotonically"):
        block(jnp.ones(4), ts=jnp.asarray([0.5, 0.2]))


def test_trainable_excludes_times_tolerances_probe(key):
    inner = _block("joint", "raise", LOOSE)
    model = (inner, {"head": jnp.ones((3,)), "count": jnp.arange(3)})
    spec = trainable(model)
    b = spec[0]
    assert b.field.A is True
    assert b.t0 is False and b.t1 is False and b.nfe_probe is False
    assert b.config.rtol is False and b.config.atol is False
    assert spec[1]["head"] is True and spec[1]["count"] is False
    # Used as intended: an optimiser filter that sees exactly the field's parameters.
    params = eqx.filter(model, spec)
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 2 and leaves[0].shape == (4, 4)


# --------------------------------------------------------------- batch modes, stats


def test_joint_and_per_sample_agree_and_stats_shapes():
    zj, sj = _batched(_block("joint", "flag", LOOSE), jnp.asarray(Z0S))
    zp, sp = _batched(_block("per_sample", "flag", LOOSE), jnp.asarray(Z0S))
    assert sj.steps.shape == () and sp.steps.shape == (2,)
    assert not bool(sj.max_steps_reached) and not np.any(np.asarray(sp.max_steps_reached))
    for z in (zj, zp):
        np.testing.assert_allclose(np.asarray(z), TRUTH, atol=3e-3, rtol=3e-3)
    np.testing.assert_allclose(np.asarray(zj), np.asarray(zp), atol=3e-3, rtol=3e-3)
    steps = np.asarray(sp.steps)
    # The easy (tiny) sample needs fewer steps than the unit one.  The joint solve's
    # error is an RMS over the batch, which the easy sample dilutes, so it needs at
    # least the easy sample's steps but may take fewer than the hard one alone.
    assert steps[0] < steps[1] and steps[0] <= int(sj.steps)
    np.testing.assert_array_equal(
        np.asarray(sp.accepted) + np.asarray(sp.rejected), steps
    )
    assert np.all(np.asarray(sp.nfe) > 0) and np.asarray(sp.nfe)[0] < np.asarray(sp.nfe)[1]


# ------------------------------------------------------------------------ max_steps


@pytest.mark.parametrize("batch_mode", ["joint", "per_sample"])
def test_max_steps_flag(batch_mode):
    z, stats = _batched(_block(batch_mode, "flag", TIGHT), jnp.asarray(Z0S))
    reached = np.asarray(stats.max_steps_reached)
    z = np.asarray(z)
    if batch_mode == "joint":
        assert reached.shape == () and bool(reached)
        assert np.all(np.isinf(z))
        assert int(stats.steps) == MAX_STEPS
    else:
        # Only the hard sample runs out; the easy one is finished and correct.
        assert reached.tolist() == [False, True]
        assert np.all(np.isinf(z[1])) and np.all(np.isfinite(z[0]))
        # |z| ~ 1e-4, so atol sets the accuracy.
        np.testing.assert_allclose(z[0], TRUTH[0], rtol=0, atol=20 * TIGHT)
        assert int(stats.steps[1]) == MAX_STEPS


@pytest.mark.parametrize("batch_mode", ["joint", "per_sample"])
def test_max_steps_raise_names_block_budget_and_fix(batch_mode):
    block = _block(batch_mode, "raise", TIGHT)
    with pytest.raises(Exception) as info:
        jax.block_until_ready(_batched(block, jnp.asarray(Z0S)))
    msg = str(info.value)
    assert "'stem_ode'" in msg and f"max_steps={MAX_STEPS}" in msg
    assert "Increase SolveConfig.max_steps" in msg and "on_max_steps='flag'" in msg
    # Same compiled function, a loose tolerance: no error.
    loose = eqx.tree_at(lambda b: b.config, block, block.config.replace(rtol=LOOSE, atol=LOOSE))
    z, _ = _batched(loose, jnp.asarray(Z0S))
    assert np.all(np.isfinite(np.asarray(z)))


def test_backward_solve_max_steps_is_not_silent():
    """The backsolve adjoint's backward solve has the same step budget.  Its error norm
    also covers the parameter adjoint (seminorm=False), so with the budget set to what
    the forward solve needed, the backward solve runs out: raise, or inf gradients."""
    z0 = jnp.asarray(Z0S[1])
    # At 1e-8 the forward takes 10 steps and the backward 11 (measured with a larger
    # budget, 2026-11-22), so a budget of the forward's steps starves the backward.
    probe = _block("joint", "flag", 1e-8)
    probe = eqx.tree_at(lambda b: b.config, probe, probe.config.replace(max_steps=1000))
    _, stats = probe(z0)
    fwd_steps = int(stats.steps)
    assert not bool(stats.max_steps_reached)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(block):
        return jnp.sum(block(z0)[0] ** 2)

    def with_budget(on_max_steps, tol=1e-8):
        cfg = probe.config.replace(
            max_steps=fwd_steps, on_max_steps=on_max_steps, rtol=tol, atol=tol
        )
        return eqx.tree_at(lambda b: b.config, probe, cfg)

    g = grad(with_budget("flag"))
    assert np.all(np.isinf(np.asarray(g.field.A)))
    with pytest.raises(Exception) as info:
        jax.block_until_ready(grad(with_budget("raise")))
    assert "backward (adjoint) solve" in str(info.value) and "'stem_ode'" in str(info.value)
    assert f"max_steps={fwd_steps}" in str(info.value)
    # Same compiled gradient, a looser tolerance: the backward solve fits, finite.
    g = grad(with_budget("flag", tol=1e-3))
    assert np.all(np.isfinite(np.asarray(g.field.A)))
