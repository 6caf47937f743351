"""jaxode.nn.layers.GroupNorm: the same function, gradients and higher derivatives
as equinox.nn.GroupNorm (its reference), checked in float64 and against finite
differences, plus float32 agreement inside a lax.scan, as in a solver loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxode.nn.layers import GroupNorm, group_norm


def _pair(channels, groups, key, dtype, affine=True):
    """(ours, Equinox's) with the same random affine parameters."""
    ref = eqx.nn.GroupNorm(groups, channels, channelwise_affine=affine, dtype=dtype)
    ours = GroupNorm(groups, channels, channelwise_affine=affine, dtype=dtype)
    if affine:
        kw, kb = jax.random.split(key)
        w = 1.0 + 0.3 * jax.random.normal(kw, (channels,), dtype)
        b = 0.3 * jax.random.normal(kb, (channels,), dtype)
        ref = eqx.tree_at(lambda n: (n.weight, n.bias), ref, (w, b))
        ours = eqx.tree_at(lambda n: (n.weight, n.bias), ours, (w, b))
    return ours, ref


@pytest.mark.parametrize("channels,groups,shape,affine", [
    (8, 4, (5, 5), True), (4, 1, (7,), False)])
def test_float64_values_gradients_jvp_and_hvp_equal_equinox(channels, groups, shape, affine, key):
    """Batched under vmap, in float64: outputs, reverse-mode gradients of x and the
    affine parameters, a forward-mode JVP and a Hessian-vector product (forward over
    reverse, which differentiates the custom JVP rule itself) equal Equinox's to
    1e-10, and the x gradient matches central finite differences."""
    with jax.enable_x64(True):
        kx, kg, kp, kd = jax.random.split(key, 4)
        ours, ref = _pair(channels, groups, kp, jnp.float64, affine)
        x = 2.0 * jax.random.normal(kx, (3, channels) + shape, jnp.float64) + 0.7
        g = jax.random.normal(kg, x.shape, jnp.float64)
        dx = jax.random.normal(kd, x.shape, jnp.float64)

        def loss(norm, x_):
            return jnp.sum(g * jnp.tanh(jax.vmap(norm)(x_)))

        @jax.jit
        def run(x):
            res = {}
            for name, norm in (("ours", ours), ("ref", ref)):
                grad_fn = jax.grad(lambda n, x_: loss(n, x_), argnums=(0, 1))
                res[name] = (
                    jax.vmap(norm)(x),
                    grad_fn(norm, x),
                    jax.jvp(lambda x_, n=norm: loss(n, x_), (x,), (dx,))[1],
                    jax.jvp(lambda x_, n=norm: jax.grad(loss, argnums=1)(n, x_), (x,), (dx,))[1],
                )
            eps = 1e-6
            res["fd"] = (loss(ours, x + eps * dx) - loss(ours, x - eps * dx)) / (2 * eps)
            return res

        res = run(x)
        for a, b in zip(jax.tree_util.tree_leaves(res["ours"]), jax.tree_util.tree_leaves(res["ref"])):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        gx = res["ours"][1][1]
        np.testing.assert_allclose(jnp.sum(gx * dx), res["fd"], rtol=1e-6)
        np.testing.assert_allclose(res["ours"][2], res["fd"], rtol=1e-6)


def test_float32_in_a_scan_equals_equinox_to_rounding(key):
    """The field's case: 64 channels, 32 groups, batch 4, 6x6, forward + VJP summed
    over a lax.scan; float32 agreement with Equinox to rounding (rel. 1e-5)."""
    kx, kg, kp = jax.random.split(key, 3)
    ours, ref = _pair(64, 32, kp, jnp.float32)
    x = jax.random.normal(kx, (4, 64, 6, 6)) * 3.0 + 1.0
    g = jax.random.normal(kg, x.shape)

    @jax.jit
    def run(norm, x):
        def step(acc, i):
            out, vjp = jax.vjp(lambda n, x_: jax.vmap(n)(x_), norm, x * (1.0 + 0.01 * i))
            gn, gx = vjp(g)
            return jax.tree_util.tree_map(jnp.add, acc, (out, gx, gn.weight, gn.bias)), None
        init = (jnp.zeros_like(x), jnp.zeros_like(x), jnp.zeros(64), jnp.zeros(64))
        return lax.scan(step, init, jnp.arange(3.0))[0]

    for a, b in zip(run(ours, x), run(ref, x)):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


def test_module_interface_matches_equinox():
    """group_norm builds it (an equinox.nn.GroupNorm subclass, so the torch twins and
    type annotations keep working); a state is passed through; a wrong channel
    count is a ValueError naming both counts."""
    norm = group_norm(64)
    assert isinstance(norm, GroupNorm) and isinstance(norm, eqx.nn.GroupNorm)
    assert (norm.groups, norm.channels) == (32, 64)
    x = jnp.ones((64, 2, 2))
    out, state = norm(x, "state")
    assert state == "state" and out.shape == x.shape
    with pytest.raises(ValueError, match="expected 64 channels.*32, 2, 2"):
        norm(jnp.ones((32, 2, 2)))


@pytest.mark.parametrize("channels,groups", [(8, 4), (6, 6), (4, 1)])
def test_channels_last_equals_equinox_on_the_transposed_input(channels, groups, key):
    """GroupNorm.channels_last on (H, W, C) is Equinox's GroupNorm on (C, H, W),
    transposed: values, gradients of x and the affine parameters, and a
    Hessian-vector product in float64 (to 1e-10), for 2-channel, 1-channel and
    whole-layer groups."""
    with jax.enable_x64(True):
        kx, kg, kp, kd = jax.random.split(key, 4)
        ours, ref = _pair(channels, groups, kp, jnp.float64)
        x = 2.0 * jax.random.normal(kx, (3, channels, 4, 5), jnp.float64) + 0.7
        g = jax.random.normal(kg, x.shape, jnp.float64)
        dx = jax.random.normal(kd, x.shape, jnp.float64)
        to_hwc, to_chw = (lambda a: jnp.transpose(a, (0, 2, 3, 1))), (lambda a: jnp.transpose(a, (0, 3, 1, 2)))

        def loss_ours(n, x_):
            return jnp.sum(g * jnp.tanh(to_chw(jax.vmap(n.channels_last)(to_hwc(x_)))))

        def loss_ref(n, x_):
            return jnp.sum(g * jnp.tanh(jax.vmap(n)(x_)))

        def derivatives(loss, norm):
            grads = jax.grad(loss, argnums=(0, 1))(norm, x)
            hvp = jax.jvp(lambda x_: jax.grad(loss, argnums=1)(norm, x_), (x,), (dx,))[1]
            return loss(norm, x), grads, hvp

        a = jax.jit(derivatives, static_argnums=0)(loss_ours, ours)
        b = jax.jit(derivatives, static_argnums=0)(loss_ref, ref)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="last axis"):
        ours.channels_last(x[0])  # a channel-first example: the shape is named
