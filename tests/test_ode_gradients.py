"""Gradients of the ODE core: the three gradient modes agree with each other and with
central finite differences (float64), for a conv field with a dense-output loss (the
multi-interval backward pass of the backsolve adjoint) and for a PyTree state.

The field uses tanh instead of the papers' ReLU: at a ReLU kink the adjoint's right-hand
side jumps, so a tight-tolerance backward solve stalls on every kink and finite
differences lose their meaning; the smooth field lets the comparison be tight.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.ode import ODEBlock, SolveConfig, backward_nfe

TOL = 1e-10
TS = (0.25, 0.6, 1.0)  # the loss reads z at all three times
MODES = [("backsolve", False), ("backsolve", True), ("checkpoint", False), ("direct", False)]


def _dense_loss(block, z0):
    zs, _ = block(z0, ts=jnp.asarray(TS))
    # Different functionals of z at each time, so each interval's cotangent matters.
    return jnp.sum(zs[0] ** 2) + jnp.sum(jnp.sin(zs[1])) + jnp.sum(zs[2] * z0)


class PairField(eqx.Module):
    """A field on a tuple state (x, y): an image x and a vector y, coupled both ways."""

    conv: ConvODEFunc
    w: jax.Array
    u: jax.Array

    def __call__(self, t, state):
        x, y = state
        dx = self.conv(t, x) + jnp.tanh(y[0]) * x
        dy = jnp.tanh(self.w @ y + self.u * jnp.mean(x))
        return dx, dy


def _pair_loss(block, z0):
    (x, y), _ = block(z0)
    return jnp.sum(x**2) + jnp.sum(jnp.cos(y))


def _with(block, adjoint, seminorm):
    cfg = block.config.replace(adjoint=adjoint, seminorm=seminorm)
    return eqx.tree_at(lambda b: b.config, block, cfg)


def _joint_grad(loss):
    """d loss / d (field parameters, z0) and the backward NFE, one compile per mode."""

    @eqx.filter_jit
    def grad(block, z0):
        g_block, g_z0 = eqx.filter_grad(lambda bz: loss(*bz))((block, z0))
        return (g_block.field, g_z0), backward_nfe(g_block)

    return grad


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jtu.tree_leaves(tree)])


@eqx.filter_jit
def _loss_at(loss, block, params, z0):
    """The loss with the field's parameters replaced (one compile per loss/block kind)."""
    _, static = eqx.partition(block.field, eqx.is_inexact_array)
    return loss(eqx.tree_at(lambda b: b.field, block, eqx.combine(params, static)), z0)


def _check_against_fd(loss, block, z0, grads, n_dirs=3, eps=1e-5, rtol=1e-5):
    """Central differences of the loss along random directions in (params, z0)."""
    params, _ = eqx.partition(block.field, eqx.is_inexact_array)
    g_flat = _flat(grads)
    keys = jax.random.split(jax.random.PRNGKey(7), n_dirs)
    leaves, treedef = jtu.tree_flatten((params, z0))
    for k in keys:
        ks = jax.random.split(k, len(leaves))
        v = [jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(ks, leaves)]
        plus = jtu.tree_unflatten(treedef, [x + eps * d for x, d in zip(leaves, v)])
        minus = jtu.tree_unflatten(treedef, [x - eps * d for x, d in zip(leaves, v)])
        up, down = _loss_at(loss, block, *plus), _loss_at(loss, block, *minus)
        fd = (float(up) - float(down)) / (2 * eps)
        ad = float(g_flat @ _flat(v))
        assert abs(fd - ad) <= rtol * max(1.0, abs(ad)), (fd, ad)


@pytest.fixture(scope="module")
def conv_problem(x64):
    field = ConvODEFunc(2, max_groups=2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    z0 = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4), jnp.float64)
    block = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=TOL, atol=TOL), name="conv")
    assert field.conv1.conv.weight.dtype == jnp.float64
    grads = {}
    for adjoint, seminorm in MODES:
        grads[(adjoint, seminorm)] = _joint_grad(_dense_loss)(_with(block, adjoint, seminorm), z0)
    return block, z0, grads


@pytest.mark.parametrize("mode", MODES[:3], ids=lambda m: f"{m[0]}-seminorm{m[1]}")
def test_modes_agree_dense_output(conv_problem, mode):
    """Every mode's gradient (params and z0) matches `direct` through a 3-interval
    dense-output loss.  The modes differ by O(tol) (backsolve solves a different,
    continuous problem), so the bound is a small multiple of the tolerance."""
    _, _, grads = conv_problem
    ref = _flat(grads[("direct", False)][0])
    got = _flat(grads[mode][0])
    assert np.all(np.isfinite(got))
    scale = np.max(np.abs(ref))
    assert scale > 1e-2  # a non-trivial gradient
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * scale)


def test_dense_output_gradient_matches_finite_differences(conv_problem):
    block, z0, grads = conv_problem
    _check_against_fd(_dense_loss, block, z0, grads[("direct", False)][0])
    _check_against_fd(_dense_loss, block, z0, grads[("backsolve", True)][0])


def test_backward_nfe_only_for_backsolve(conv_problem):
    _, _, grads = conv_problem
    nfe = {m: float(grads[m][1]) for m in MODES}
    assert nfe[("backsolve", False)] > 0 and nfe[("backsolve", True)] > 0
    # The seminorm ignores the parameter adjoint in the error estimate: fewer steps.
    assert nfe[("backsolve", True)] < nfe[("backsolve", False)]
    # Diffrax's reverse passes are not counted; the one evaluation they report is
    # f(t0, z0) for dL/dt0 (filter_grad differentiates the block's t0 too).
    assert nfe[("checkpoint", False)] == 1 and nfe[("direct", False)] == 1


def test_pytree_state_gradients(x64):
    """A tuple state (image, vector): the hand-written backsolve adjoint (with
    seminorm) matches finite differences.  (Checkpoint/direct are Diffrax's own
    reverse passes, which handle PyTrees natively; one compile fewer.)"""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(3), 5)
    field = PairField(
        ConvODEFunc(2, max_groups=2, activation=jnp.tanh, key=k1),
        0.5 * jax.random.normal(k2, (3, 3), jnp.float64),
        jax.random.normal(k3, (3,), jnp.float64),
    )
    z0 = (jax.random.normal(k4, (2, 4, 4), jnp.float64), jax.random.normal(k5, (3,), jnp.float64))
    block = ODEBlock(field, 0.0, 1.0, SolveConfig(rtol=TOL, atol=TOL, seminorm=True))
    g_bs, nfe_bs = _joint_grad(_pair_loss)(block, z0)
    assert nfe_bs > 0
    assert isinstance(g_bs[1], tuple) and g_bs[1][0].shape == (2, 4, 4)
    assert np.max(np.abs(_flat(g_bs[1][1]))) > 1e-2  # the vector part gets a gradient
    _check_against_fd(_pair_loss, block, z0, g_bs)
