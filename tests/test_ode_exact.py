"""ODE-core gradients against closed forms, in every adjoint strategy, batch mode and
time direction; NaN/inf and max-steps failures; evaluation counts.

The truth for every gradient is an independent one: the closed-form solution of the ODE
differentiated by `jax.grad` (no solver involved), or central finite differences of
the solve.  Float64, rtol = atol = 1e-10, compared to 1e-6 relative.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.fields import ConvODEFunc
from jaxode.ode import (
    ADJOINTS,
    Backsolve,
    DiffraxBacksolve,
    ODEBlock,
    RecursiveCheckpoint,
    SolveConfig,
    backward_nfe,
)
from jaxode.ode._solve import NONFINITE_PATIENCE

TOL = 1e-10
REL = 1e-6
MODES = sorted(ADJOINTS)  # backsolve, checkpoint, diffrax_backsolve, direct
DIRECTIONS = {"forward": (0.0, 1.0, (0.3, 0.6, 1.0)), "backward": (1.0, 0.2, (0.9, 0.5, 0.2))}


class Affine(eqx.Module):
    """dz/dt = a z + c, with c passed as `args`: z(t) = (z0 + c/a) e^{a (t - t0)} - c/a."""

    a: jax.Array

    def __call__(self, t, z, c):
        return self.a * z + c


def affine_solution(a, c, z0, t0, t):
    return (z0 + c / a) * jnp.exp(a * (t - t0)) - c / a


def _assert_rel_close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    scale = np.max(np.abs(want))
    assert scale > 1e-3, (what, "degenerate truth")
    err = np.max(np.abs(got - want)) / scale
    assert err < REL, (what, err, got, want)


@pytest.fixture(scope="module")
def affine_problem(x64):
    rng = np.random.default_rng(0)
    return dict(
        a=jnp.asarray(-0.8),
        z0=jnp.asarray(rng.normal(size=(2, 3))),
        c=jnp.asarray(rng.normal(size=(2, 3))),
        R=jnp.asarray(rng.normal(size=(2, 3, 3))),  # weights of the 3 save times
    )


def _affine_loss(p, a, z0, c, t0, t1, ts):
    """The loss from the closed form: an end-point term plus a dense-output term (two
    solves in the block version).  The truth is jax.grad of this."""
    z1 = affine_solution(a, c, z0, t0, t1)
    zs = affine_solution(a, c[:, None], z0[:, None], t0, ts[None, :, None])
    return jnp.sum(p["R"][:, 0] * z1) + jnp.sum(p["R"] * zs)


def _pairwise_cases():
    """Every adjoint in both time directions and both batch modes, and every
    (direction, batch mode) pair, in 8 cases instead of all 16 (each case compiles
    two solves and their gradients, about 20 s of the suite)."""
    pairs = [[("forward", "joint"), ("backward", "per_sample")],
             [("forward", "per_sample"), ("backward", "joint")]]
    return [(adjoint, d, b) for i, adjoint in enumerate(MODES) for d, b in pairs[i % 2]]


@pytest.mark.parametrize("adjoint, direction, batch_mode", _pairwise_cases())
def test_every_gradient_matches_closed_form(affine_problem, adjoint, direction, batch_mode):
    """dL/da (theta), dL/dz0, dL/dargs, dL/dt0, dL/dt1 and dL/dts at once: the loss
    adds an end-point solve (t1 matters) and a dense-output solve at ts (t1 only
    bounds the save times there)."""
    p = affine_problem
    t0, t1, ts = DIRECTIONS[direction]
    ts = jnp.asarray(ts)
    cfg = SolveConfig(rtol=TOL, atol=TOL, adjoint=adjoint, batch_mode=batch_mode)
    block = ODEBlock(Affine(p["a"]), t0, t1, cfg)

    def loss(b, z0, c, ts):
        z1, _ = b.batched(z0, args=c)
        zs, _ = b.batched(z0, ts=ts, args=c)
        return jnp.sum(p["R"][:, 0] * z1) + jnp.sum(p["R"] * zs)

    g_block, g_z0, g_c, g_ts = eqx.filter_jit(eqx.filter_grad(lambda x: loss(*x)))(
        (block, p["z0"], p["c"], ts))
    want = jax.grad(lambda *x: _affine_loss(p, *x), argnums=tuple(range(6)))(
        p["a"], p["z0"], p["c"], t0, t1, ts)
    tag = (adjoint, direction, batch_mode)
    got = (g_block.field.a, g_z0, g_c, g_block.t0, g_block.t1, g_ts)
    for g, w, what in zip(got, want, ("dL/da", "dL/dz0", "dL/dargs", "dL/dt0", "dL/dt1", "dL/dts")):
        _assert_rel_close(g, w, tag + (what,))


class Logistic(eqx.Module):
    """dz/dt = r z (1 - z): z(t) = 1 / (1 + (1/z0 - 1) e^{-r (t - t0)})."""

    r: jax.Array

    def __call__(self, t, z):
        return self.r * z * (1 - z)


@pytest.mark.parametrize("adjoint, direction", [("backsolve", "backward"), ("checkpoint", "forward")])
def test_nonlinear_gradients_match_closed_form(x64, adjoint, direction):
    t0, t1, _ = DIRECTIONS[direction]
    r, z0 = jnp.asarray(1.7), jnp.asarray([0.2, 0.6])
    block = ODEBlock(Logistic(r), t0, t1, SolveConfig(rtol=TOL, atol=TOL, adjoint=adjoint))

    def loss(b, z0):
        return jnp.sum(jnp.asarray([1.0, -2.0]) * b(z0)[0] ** 2)

    def truth(r, z0, t0, t1):
        z1 = 1 / (1 + (1 / z0 - 1) * jnp.exp(-r * (t1 - t0)))
        return jnp.sum(jnp.asarray([1.0, -2.0]) * z1 ** 2)

    g_block = eqx.filter_jit(eqx.filter_grad(loss))(block, z0)
    g_z0 = eqx.filter_jit(jax.grad(loss, argnums=1))(block, z0)
    want = jax.grad(truth, argnums=(0, 1, 2, 3))(r, z0, t0, t1)
    for got, exp, what in zip((g_block.field.r, g_z0, g_block.t0, g_block.t1), want,
                              ("dL/dr", "dL/dz0", "dL/dt0", "dL/dt1")):
        _assert_rel_close(got, exp, (adjoint, direction, what))


def test_time_gradients_match_finite_differences(x64, key):
    """A conv field ending in GroupNorm (so the loss is sum(R * z), not sum(z)): dL/dts
    by backsolve against central differences of the solve."""
    field = ConvODEFunc(2, max_groups=2, activation=jnp.tanh, key=key)
    field = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field)
    z0 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4), jnp.float64)
    R = jax.random.normal(jax.random.PRNGKey(2), (3, 2, 4, 4), jnp.float64)
    block = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=1e-11, atol=1e-11))
    loss = eqx.filter_jit(lambda ts: jnp.sum(R * block(z0, ts=ts)[0]))
    ts = jnp.asarray([0.2, 0.5, 0.9])
    g_ts = eqx.filter_jit(jax.grad(lambda ts: jnp.sum(R * block(z0, ts=ts)[0])))(ts)
    h = 1e-5
    for i in range(3):
        e = jnp.zeros(3).at[i].set(h)
        fd = (loss(ts + e) - loss(ts - e)) / (2 * h)
        np.testing.assert_allclose(g_ts[i], fd, rtol=1e-5)
    assert np.min(np.abs(np.asarray(g_ts))) > 1e-3


def test_diffrax_adjoints_equal_ours_on_a_conv_field(x64, key):
    """Diffrax's own BacksolveAdjoint and RecursiveCheckpointAdjoint (with a set number
    of checkpoints) give the hand-written backsolve's gradient at tight tolerance."""
    field = ConvODEFunc(2, max_groups=2, activation=jnp.tanh, key=key)
    field = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, field)
    z0 = jax.random.normal(jax.random.PRNGKey(3), (2, 2, 3, 3), jnp.float64)
    R = jax.random.normal(jax.random.PRNGKey(4), (2, 2, 3, 3), jnp.float64)

    def grad(adjoint):
        block = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=1e-9, atol=1e-9, adjoint=adjoint))
        loss = lambda b, z: jnp.sum(R * b.batched(z)[0])
        g = eqx.filter_jit(eqx.filter_grad(loss))(block, z0)
        return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(eqx.filter(g.field, eqx.is_inexact_array))])

    ours = grad(Backsolve())
    assert np.max(np.abs(ours)) > 1e-2
    for other in (DiffraxBacksolve(), RecursiveCheckpoint(checkpoints=4)):
        np.testing.assert_allclose(grad(other), ours, rtol=0, atol=1e-6 * np.max(np.abs(ours)))


# ------------------------------------------------------------------ NaN / inf


class Decay(eqx.Module):
    k: jax.Array

    def __call__(self, t, z):
        return -self.k * z


class BreaksAt(eqx.Module):
    """-z, turning NaN from t = t_bad on."""

    t_bad: float = eqx.field(static=True)

    def __call__(self, t, z):
        return jnp.where(t >= self.t_bad, jnp.nan, -z)


def _error_message(fn):
    with pytest.raises(Exception) as info:
        jax.block_until_ready(fn())
    return str(info.value)


def test_nan_initial_state_fails_fast_and_says_so():
    block = ODEBlock(Decay(jnp.asarray(1.0)), 0.0, 1.0, name="stem")
    z0 = jnp.asarray([1.0, jnp.nan])
    msg = _error_message(lambda: block(z0))
    assert "'stem'" in msg and "initial state z0 contains NaN or inf" in msg
    flagged = ODEBlock(Decay(jnp.asarray(1.0)), 0.0, 1.0, SolveConfig(on_max_steps="flag"))
    z1, stats = flagged(z0)
    assert bool(stats.nonfinite) and not bool(stats.max_steps_reached)
    assert int(stats.steps) <= NONFINITE_PATIENCE + 2  # not max_steps=4096
    assert np.all(np.isinf(np.asarray(z1)))


@pytest.mark.parametrize("solver, kw", [("dopri5", {}), ("rk4", dict(num_steps=20))])
def test_field_turning_nan_names_block_and_time(solver, kw):
    block = ODEBlock(BreaksAt(0.55), 0.0, 1.0, SolveConfig(solver=solver, **kw), name="mid")
    msg = _error_message(lambda: block(jnp.ones(3)))
    assert "'mid'" in msg and "became NaN or inf" in msg
    if solver == "dopri5":  # adaptive: stops near the bad time, within a few steps
        assert "reached only 50-60%" in msg
    flagged = eqx.tree_at(lambda b: b.config, block, block.config.replace(on_max_steps="flag"))
    _, stats = flagged(jnp.ones(3))
    assert bool(stats.nonfinite) and int(stats.steps) < 3 * NONFINITE_PATIENCE


@pytest.mark.parametrize("adjoint", ["backsolve", "checkpoint"])
def test_per_sample_flag_isolates_the_bad_example(adjoint):
    """One NaN example in a per-sample batch: it is flagged; the others' outputs and
    gradients (z0 and parameters) equal those of a batch without it."""
    cfg = SolveConfig(rtol=1e-6, atol=1e-6, adjoint=adjoint, batch_mode="per_sample",
                      on_max_steps="flag")
    block = ODEBlock(Decay(jnp.asarray(0.7)), 0.0, 1.0, cfg)
    good = jnp.asarray([[1.0, 2.0], [0.5, -1.0]])
    bad = jnp.asarray([[jnp.nan, 1.0]])
    R = jnp.asarray([[1.0, -1.0], [2.0, 0.5], [3.0, 3.0]])

    @eqx.filter_jit
    def run(b, z0, R):
        def loss(b, z0):
            z1, stats = b.batched(z0)
            return jnp.sum(jnp.where(stats.failed[:, None], 0.0, R * z1)), (z1, stats)

        (_, (z1, stats)), (g_b, g_z0) = eqx.filter_value_and_grad(
            lambda bz: loss(*bz), has_aux=True)((b, z0))
        return z1, stats, g_b.field.k, g_z0

    z1, stats, gk, gz0 = run(block, jnp.concatenate([good[:1], bad, good[1:]]), R)
    z1_ref, stats_ref, gk_ref, gz0_ref = run(block, good, R[jnp.asarray([0, 2])])
    assert stats.nonfinite.tolist() == [False, True, False]
    assert not bool(jnp.any(stats_ref.failed))
    np.testing.assert_allclose(z1[jnp.asarray([0, 2])], z1_ref, rtol=1e-6)
    assert np.all(np.isinf(np.asarray(z1[1])))
    np.testing.assert_allclose(gz0[jnp.asarray([0, 2])], gz0_ref, rtol=1e-6)
    assert np.all(np.asarray(gz0[1]) == 0)
    np.testing.assert_allclose(gk, gk_ref, rtol=1e-6)
    assert abs(float(gk_ref)) > 1e-2


@pytest.mark.parametrize("adjoint", MODES)
def test_flagged_max_steps_gives_zero_gradient_in_every_mode(adjoint):
    """One documented behaviour: a failed (flagged) solve contributes zero gradient."""
    cfg = SolveConfig(rtol=1e-8, atol=1e-8, adjoint=adjoint, max_steps=3, on_max_steps="flag")
    block = ODEBlock(Decay(jnp.asarray(3.0)), 0.0, 5.0, cfg)

    def loss(b, z0):
        z1, stats = b(z0)
        return jnp.sum(jnp.where(stats.failed, 0.0, z1)), stats

    (g_b, g_z0), stats = eqx.filter_jit(eqx.filter_grad(lambda bz: loss(*bz), has_aux=True))(
        (block, jnp.ones(2)))
    assert bool(stats.max_steps_reached)
    assert float(g_b.field.k) == 0.0 and np.all(np.asarray(g_z0) == 0.0)


# ------------------------------------------------------------------ counting


class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1


class CountingDecay(eqx.Module):
    counter: Counter = eqx.field(static=True)

    def __call__(self, t, z):
        jax.debug.callback(self.counter.add)
        return -z


def test_empty_interval_makes_no_evaluations():
    counter = Counter()
    block = ODEBlock(CountingDecay(counter), 0.5, 0.5)
    z1, stats = eqx.filter_jit(lambda b: b(jnp.ones(2)))(block)
    jax.effects_barrier()
    assert counter.n == 0 and int(stats.nfe) == 0 and int(stats.steps) == 0
    np.testing.assert_array_equal(z1, np.ones(2))


def test_per_sample_reports_nfe_spent_as_batch_maximum():
    cfg = SolveConfig(rtol=1e-6, atol=1e-6, batch_mode="per_sample")
    block = ODEBlock(Decay(jnp.asarray(1.0)), 0.0, 3.0, cfg)
    _, stats = block.batched(jnp.asarray([[1e-3], [1e3]]))
    nfe = np.asarray(stats.nfe)
    assert nfe[0] != nfe[1]
    assert np.all(np.asarray(stats.nfe_spent) == nfe.max())


def test_max_steps_progress_is_right_when_integrating_backwards():
    """From t0 = 1 to t1 = 0 through a field that becomes stiff below t = 0.45: the
    solve stops a little past the middle, and the message says so (the old report
    measured progress with max(step times), i.e. ~0% for a backward solve)."""

    class StiffBelow(eqx.Module):
        def __call__(self, t, z):
            return -jnp.where(t < 0.45, 1e4, 1.0) * z

    block = ODEBlock(StiffBelow(), 1.0, 0.0, SolveConfig(rtol=1e-6, atol=1e-6, max_steps=60))
    msg = _error_message(lambda: block(jnp.ones(2)))
    assert "max_steps=60" in msg and "reached only 50-60%" in msg


def test_backward_nfe_counts_time_gradient_evaluations():
    """dL/dts costs one evaluation per save time and dL/dt0 one more: they are part of
    the reported backward NFE, and none are spent when no time is differentiated."""
    counter = Counter()
    block = ODEBlock(CountingDecay(counter), 0.0, 1.0, SolveConfig(adjoint="checkpoint"))
    ts = jnp.asarray([0.25, 0.5, 1.0])

    def loss(b, ts):
        return jnp.sum(b(jnp.ones(2), ts=ts)[0])

    g_block, _ = eqx.filter_jit(eqx.filter_grad(lambda bt: loss(*bt)))((block, ts))
    assert float(backward_nfe(g_block)) == 3 + 1
    # Only the parameters (none here) and the probe: no time gradients, no evaluations.
    spec = jax.tree_util.tree_map(lambda _: False, block)
    spec = eqx.tree_at(lambda b: b.nfe_probe, spec, True)
    diff, static = eqx.partition(block, spec)
    g = eqx.filter_jit(jax.grad(lambda d: loss(eqx.combine(d, static), ts)))(diff)
    assert float(backward_nfe(g)) == 0


def test_field_signatures_without_args():
    """f(t, z), a forwarding wrapper f(t, z, *rest), and f(t, z, args) all integrate
    without args (the last one receives args=None); args given to a two-argument field
    are refused with advice."""

    class Wrapper(eqx.Module):
        inner: Decay

        def __call__(self, t, z, *rest):
            return self.inner(t, z, *rest)

    class NeedsArgs(eqx.Module):
        def __call__(self, t, z, args):
            assert args is None
            return -z

    z0 = jnp.ones(2)
    want = np.exp(-1.0) * np.ones(2)
    for field in (Decay(jnp.asarray(1.0)), Wrapper(Decay(jnp.asarray(1.0))), NeedsArgs()):
        z1, _ = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=1e-7, atol=1e-7))(z0)
        np.testing.assert_allclose(z1, want, rtol=1e-5)
    with pytest.raises(ValueError, match="write it f\\(t, z, args\\)"):
        ODEBlock(Decay(jnp.asarray(1.0)))(z0, args=jnp.ones(2))
