"""Training phases (He, Xie, Lin 2019, Sec. 3.2.2): Euler-backprop, then adjoint.

Truths used: a hand-written forward-Euler loop (values and gradients by plain
autodiff) for the Euler phase; the schedule arithmetic by hand.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.fields.evolving import EvolvingODE
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.train.phases import Phase, apply_phase, parse_schedule, phase_at, total_epochs


class Tanh(eqx.Module):
    w: jax.Array

    def __call__(self, t, z):
        return jnp.tanh(self.w @ z) * (1.0 + jnp.asarray(t, z.dtype))


def test_schedule_parsing_and_lookup():
    phases = parse_schedule("euler:3, adjoint:2")
    assert phases == [Phase("euler", 3), Phase("adjoint", 2)]
    assert total_epochs(phases) == 5
    assert [phase_at(phases, e).name for e in range(7)] == ["euler"] * 3 + ["adjoint"] * 4
    for bad in ("euler", "euler:0", "rk4:3", "euler:3,adjoint:x", ""):
        with pytest.raises(ValueError, match="schedule"):
            parse_schedule(bad)


def test_euler_phase_is_backprop_through_euler_steps():
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3), jnp.float32)
    base = SolveConfig(rtol=1e-4, atol=1e-4)

    class Model(eqx.Module):
        plain: ODEBlock
        ew: EvolvingODE

        def __call__(self, z):
            z, _ = self.plain(z)
            (z, _), _ = self.ew(z)
            return z

    model = Model(ODEBlock(Tanh(w), 0.0, 1.0, base),
                  EvolvingODE(Tanh(0.5 * w), "zero", 0.0, 1.0, base))
    n = 7
    euler = apply_phase(model, Phase("euler", 1), base, euler_steps=n)
    for block in (euler.plain, euler.ew.block):
        assert block.config.solver == "euler" and block.config.num_steps == n
        assert block.config.adjoint.name == "direct"
    back = apply_phase(euler, Phase("adjoint", 1), base)
    assert back.plain.config.solver == "dopri5" and back.ew.block.config.adjoint.name == "backsolve"

    def by_hand(w1, w2, z):
        h = 1.0 / n
        for w_ in (w1, w2):
            for k in range(n):
                z = z + h * Tanh(w_)(k * h, z)
        return z

    z0 = jnp.array([0.3, -0.2, 0.9], jnp.float32)
    loss = lambda m: jnp.sum(m(z0) ** 2)  # noqa: E731
    z1, grads = eqx.filter_jit(lambda m: (m(z0), eqx.filter_grad(loss)(m)))(euler)
    np.testing.assert_allclose(z1, by_hand(w, 0.5 * w, z0), rtol=1e-5, atol=1e-6)
    g1, g2 = jax.grad(lambda a, b: jnp.sum(by_hand(a, b, z0) ** 2), argnums=(0, 1))(w, 0.5 * w)
    np.testing.assert_allclose(grads.plain.field.w, g1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads.ew.theta0.w, g2, rtol=1e-4, atol=1e-6)


def test_seconds_per_epoch_groups_fits_history_by_phase():
    """He et al. report s/epoch of each phase: the helper must group `fit`'s rows by
    ``phase`` (a run without phases is all adjoint) and keep the first epoch, which
    holds the compilation, out of the median."""
    from jaxode.train.phases import seconds_per_epoch

    rows = [{"phase": "euler", "train_time_s": t} for t in (50.0, 3.0, 5.0, 4.0)]
    rows += [{"phase": "adjoint", "train_time_s": t} for t in (90.0, 9.0)]
    got = seconds_per_epoch(rows)
    assert got["euler"] == {"epochs": 4, "first (incl. compile)": 50.0, "last": 4.0,
                            "median after the first": 4.0}
    assert got["adjoint"]["median after the first"] == 9.0
    assert seconds_per_epoch([{"train_time_s": 7.0}]) == {
        "adjoint": {"epochs": 1, "first (incl. compile)": 7.0, "last": 7.0,
                    "median after the first": None}}
