"""NODE-EW (He, Xie, Lin 2019): evolving-weight fields.

Truths used: central finite differences in float64 (gradients of theta_0, theta_1,
z0 in every gradient mode), the fixed-weight ODE block (g = 0), the matrix
exponential (linear weight dynamics), hand-counted parameter numbers.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.evolving import (
    ElementwiseDynamics,
    EvolvingODE,
    LowRankDynamics,
    ZeroDynamics,
    num_params,
    split_weights,
)
from jaxode.ode import ODEBlock, SolveConfig


class TinyField(eqx.Module):
    """f(t, z) = W2 tanh(W1 z + b1 + t w_t) + b2, z in R^d."""

    w1: jax.Array
    b1: jax.Array
    wt: jax.Array
    w2: jax.Array
    b2: jax.Array

    def __init__(self, d, h, key, dtype=jnp.float32):
        k = jax.random.split(key, 5)
        self.w1 = jax.random.normal(k[0], (h, d), dtype) / np.sqrt(d)
        self.b1 = 0.1 * jax.random.normal(k[1], (h,), dtype)
        self.wt = jax.random.normal(k[2], (h,), dtype)
        self.w2 = jax.random.normal(k[3], (d, h), dtype) / np.sqrt(h)
        self.b2 = 0.1 * jax.random.normal(k[4], (d,), dtype)

    def __call__(self, t, z):
        t = jnp.asarray(t, z.dtype)
        return self.w2 @ jnp.tanh(self.w1 @ z + self.b1 + t * self.wt) + self.b2


def _z0(batch=None, dtype=jnp.float32):
    shape = (3,) if batch is None else (batch, 3)
    return jax.random.normal(jax.random.PRNGKey(7), shape, dtype)


def test_zero_dynamics_is_the_fixed_weight_ode():
    """g = 0 (ZeroDynamics, or ElementwiseDynamics at initialisation) gives exactly the
    fixed-weight neural ODE (same steps, same arithmetic with a fixed-step solver)."""
    field = TinyField(3, 6, jax.random.PRNGKey(1))
    cfg = SolveConfig(solver="rk4", num_steps=8)
    ts = jnp.linspace(0.0, 1.0, 5)
    z_fixed, _ = ODEBlock(field, 0.0, 1.0, cfg)(_z0(), ts=ts)
    for g in ("zero", "elementwise"):
        ew = EvolvingODE(field, g, 0.0, 1.0, cfg, key=jax.random.PRNGKey(2))
        (z, theta), _ = ew(_z0(), ts=ts)
        np.testing.assert_array_equal(np.asarray(z), np.asarray(z_fixed))
        for a, b in zip(jtu.tree_leaves(theta), jtu.tree_leaves(eqx.filter(field, eqx.is_array))):
            # theta stays theta_0 (up to the rounding of the dense-output interpolant)
            np.testing.assert_allclose(a[-1], b, rtol=1e-6, atol=1e-7)
        assert ew.fixed_field().w1 is field.w1


def _loss_fn(ew, z0):
    (z1, _), _ = ew(z0)
    return jnp.sum(jnp.sin(z1) * jnp.arange(1.0, 4.0, dtype=z1.dtype))


@pytest.mark.parametrize(
    "adjoint, dynamics",
    [("backsolve", "elementwise"), ("checkpoint", "lowrank")],
)
def test_gradients_match_finite_differences(adjoint, dynamics):
    """dL/dtheta_0, dL/dtheta_1 and dL/dz0 against central differences (float64):
    the joint-state backsolve is the paper's augmented dynamics (eq. 6)."""
    with jax.enable_x64(True):
        f64 = jnp.float64
        field = TinyField(3, 4, jax.random.PRNGKey(3), f64)
        cfg = SolveConfig(rtol=1e-10, atol=1e-10, adjoint=adjoint)
        ew = EvolvingODE(field, dynamics, 0.0, 1.0, cfg, key=jax.random.PRNGKey(4),
                         init_scale=0.5)
        z0 = _z0(dtype=f64)
        params, static = eqx.partition(ew, eqx.is_inexact_array)
        theta_1 = eqx.filter(ew.g, eqx.is_inexact_array)
        assert num_params(theta_1) > 0

        # one compiled function serves both the gradient and the finite differences
        value_and_grad = jax.jit(jax.value_and_grad(
            lambda p, z: _loss_fn(eqx.combine(p, static), z), argnums=(0, 1)))

        def loss(p, z):
            return value_and_grad(p, z)[0]

        _, (g_params, g_z0) = value_and_grad(params, z0)
        eps = 1e-5
        groups = {
            "theta_0": lambda m: m.theta0,
            "theta_1": lambda m: m.block.field.g,
        }
        rng = np.random.default_rng(0)
        for name, where in groups.items():
            sub = eqx.filter(where(params), eqx.is_inexact_array)
            direction = jtu.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), f64), sub)
            analytic = sum(jnp.vdot(a, d) for a, d in zip(
                jtu.tree_leaves(eqx.filter(where(g_params), eqx.is_inexact_array)),
                jtu.tree_leaves(direction)))

            def shifted(s):
                new = jtu.tree_map(lambda x, d: x + s * d, sub, direction)
                return eqx.tree_at(where, params, eqx.combine(new, where(params)))

            numeric = (loss(shifted(eps), z0) - loss(shifted(-eps), z0)) / (2 * eps)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=name)
        d = jnp.asarray(rng.normal(size=3), f64)
        numeric = (loss(params, z0 + eps * d) - loss(params, z0 - eps * d)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(g_z0, d), numeric, rtol=1e-5, atol=1e-7, err_msg="z0")


def test_batched_joint_shares_theta_and_matches_per_example():
    field = TinyField(3, 5, jax.random.PRNGKey(5))
    cfg = SolveConfig(solver="rk4", num_steps=6)
    ew = EvolvingODE(field, "elementwise", 0.0, 1.0, cfg, key=jax.random.PRNGKey(6),
                     init_scale=0.3)
    z0s = _z0(batch=4)
    ts = jnp.array([0.0, 0.5, 1.0])
    (zs, theta), _ = ew.batched(z0s, ts=ts)
    assert zs.shape == (4, 3, 3)
    assert jtu.tree_leaves(theta)[0].shape[0] == 3  # one shared trajectory (time axis)
    # per_sample mode: one solve per example (vmap of the single-example path)
    per = eqx.tree_at(lambda m: m.block.config, ew, cfg.replace(batch_mode="per_sample"))
    (zs_p, theta_p), _ = per.batched(z0s, ts=ts)
    np.testing.assert_allclose(zs_p, zs, rtol=1e-5, atol=1e-6)
    for a, b in zip(jtu.tree_leaves(theta), jtu.tree_leaves(theta_p)):
        assert b.shape == (4,) + a.shape
        np.testing.assert_allclose(b[2], a, rtol=1e-6, atol=1e-7)
    # weights really move when g != 0
    assert float(jnp.max(jnp.abs(theta.w1[-1] - field.w1))) > 1e-3


def test_lowrank_weights_follow_the_matrix_exponential():
    """With b = 0 the low-rank dynamics is linear and autonomous:
    M(t) = expm(t U diag(a) V^T) M(0)."""
    field = TinyField(3, 4, jax.random.PRNGKey(8))
    g = LowRankDynamics(split_weights(field)[0], rank=2, init_scale=0.7, key=jax.random.PRNGKey(9))
    g = eqx.tree_at(lambda d: d.b, g, tuple(jnp.zeros_like(x) for x in g.b))
    ew = EvolvingODE(field, g, 0.0, 1.0, SolveConfig(rtol=1e-7, atol=1e-7))
    ts = jnp.array([0.25, 1.0])
    theta = ew.weights_at(ts)
    leaves = jtu.tree_leaves(split_weights(field)[0])
    for l, (x0, traj) in enumerate(zip(leaves, jtu.tree_leaves(theta))):
        A = g.U[l] @ jnp.diag(g.a[l]) @ g.V[l].T
        for k, t in enumerate(ts):
            m = jsl.expm(t * A) @ jnp.reshape(x0, (x0.shape[0], -1))
            np.testing.assert_allclose(jnp.reshape(traj[k], m.shape), m, rtol=1e-4, atol=1e-5)


def test_parameter_counts_and_cheap_dynamics():
    conv = ConvODEFunc(64, key=jax.random.PRNGKey(0))
    theta, rest = split_weights(conv)
    # two ConcatConv 3x3 (65 -> 64, bias) and three GroupNorm(64) affine pairs
    assert num_params(theta) == 2 * (65 * 64 * 9 + 64) + 3 * 2 * 64 == 75_392
    assert num_params(rest) == 0
    shapes = [x.shape for x in jtu.tree_leaves(theta)]
    ew = ElementwiseDynamics(theta, hidden=8, key=jax.random.PRNGKey(1))
    assert num_params(ew) == len(shapes) * (4 * 8 + 1)
    lr = LowRankDynamics(theta, rank=2, key=jax.random.PRNGKey(1))
    assert num_params(lr) == sum(2 * 2 * (s[0] + 1) for s in shapes)
    assert num_params(ZeroDynamics()) == 0
    # only the conv weights evolve when asked: GroupNorm affine stays fixed
    theta_w, rest_w = split_weights(conv, evolve=lambda x: x.ndim == 4)
    assert num_params(theta_w) == 2 * 65 * 64 * 9
    assert num_params(rest_w) == 75_392 - 2 * 65 * 64 * 9


def test_errors_name_the_problem():
    field = TinyField(3, 4, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="unknown weight dynamics"):
        EvolvingODE(field, "dense", key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="needs a PRNG"):
        EvolvingODE(field, "elementwise")
    g = ElementwiseDynamics({"a": jnp.ones(2)}, key=jax.random.PRNGKey(0))
    ew = EvolvingODE(field, g)
    with pytest.raises(ValueError, match="structure"):
        ew(_z0())


def test_node_ew_mnist_matches_the_odenet_of_the_same_size():
    from jaxode.models.node_ew import chen_odenet, node_ew_mnist
    from jaxode.train.utils import count_params

    key = jax.random.PRNGKey(0)
    ew, fixed = node_ew_mnist(key=key), chen_odenet(key=key)
    # REFERENCE_FACTS: Chen's MNIST ODE-Net ('conv' down-sampling) has 208,266
    assert count_params(fixed) == 208_266
    # + ElementwiseDynamics: 10 weight tensors x (4 * 8 + 1)
    assert count_params(ew) == 208_266 + 10 * 33
    # same initial function: theta_0 is the ODE-Net's field
    for a, b in zip(jtu.tree_leaves(ew.ode.fixed_field()), jtu.tree_leaves(fixed.ode.field)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_flow_optimizer_gives_theta1_its_own_learning_rate():
    """the flow experiment's stabilised NODE-EW training: Adam's first step moves each
    parameter by lr * sign(grad); with the trainer's theta_1 group
    (g_lr_scale = g_lr / lr) theta_1 (the arrays of g) must move by g_lr, theta_0 by
    lr, and a fixed-weight flow has no theta_1."""
    import optax

    from jaxode.models.flows import make_flow
    from jaxode.ode import trainable
    from jaxode.train import TrainConfig, make_optimizer
    from jaxode.train.loop import optimizer_view

    flow = make_flow("evolving", 4, 1, SolveConfig(), key=jax.random.PRNGKey(0), g_hidden=2)
    params = optimizer_view(eqx.filter(flow, trainable(flow)))
    grads = jtu.tree_map(jnp.ones_like, params)
    adam = optax.adam(1e-2)
    tx = make_optimizer(TrainConfig(lr=1e-2, g_lr_scale=0.1), adam)
    with jax.numpy_dtype_promotion("standard"):  # optax's bias correction mixes dtypes
        updates, _ = tx.update(grads, tx.init(params), params)
    g_updates = jtu.tree_leaves(updates.ode.block.field.g)
    theta0_updates = jtu.tree_leaves(updates.ode.theta0)
    assert g_updates and theta0_updates
    for u in g_updates:
        np.testing.assert_allclose(u, -1e-3, rtol=1e-4)
    for u in theta0_updates:
        np.testing.assert_allclose(u, -1e-2, rtol=1e-4)
    # the same settings give the same object: the jitted step compiles once
    assert make_optimizer(TrainConfig(lr=1e-2, g_lr_scale=0.1), adam) is tx


def test_trainer_scales_the_learning_rate_of_theta_1_only():
    """`TrainConfig.g_lr_scale` multiplies the step of theta_1 (the arrays of g) and of
    nothing else: with scale 0 one SGD step moves theta_0 but leaves g unchanged; with
    scale 1 both move."""
    import equinox as eqx
    import jax.tree_util as jtu

    from jaxode.fields.cnf import ConcatMLP
    from jaxode.fields.evolving import EvolvingODE
    from jaxode.ode import SolveConfig
    from jaxode.train import TrainConfig, fit
    from jaxode.train.optim import theta1_labels

    class Task(eqx.Module):
        def train_loss(self, model, batch, key):
            (z, _), _ = model.batched(batch["x"])
            return jnp.mean((z - 1.0) ** 2), {}

    ode = EvolvingODE(ConcatMLP(2, 8, key=jax.random.PRNGKey(0)), "elementwise", 0.0, 1.0,
                      SolveConfig(solver="euler", num_steps=4), key=jax.random.PRNGKey(1))
    n_g = len(jtu.tree_leaves(eqx.filter(ode.g, eqx.is_inexact_array)))
    from jaxode.ode import trainable

    labels = jtu.tree_leaves(theta1_labels(eqx.filter(ode, trainable(ode))))
    assert labels.count("theta_1") == n_g
    assert labels.count("theta_0") == len(jtu.tree_leaves(ode.theta0))

    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    def run(scale):
        cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, g_lr_scale=scale, progress=False,
                          data_parallel=False)
        return fit(ode, Task(), lambda e: [{"x": x}], config=cfg, log=lambda s: None).model

    def moved(a, b):
        return any(not np.array_equal(np.asarray(u), np.asarray(v))
                   for u, v in zip(jtu.tree_leaves(a), jtu.tree_leaves(b)))

    frozen, both = run(0.0), run(1.0)
    assert moved(frozen.theta0, ode.theta0) and not moved(frozen.g, ode.g)
    assert moved(both.theta0, ode.theta0) and moved(both.g, ode.g)
