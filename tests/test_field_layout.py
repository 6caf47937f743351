"""ConvODEFunc evaluates channels-last inside (jaxode.nn.conv.conv2d_hwc,
GroupNorm.channels_last): it must equal the channel-first composition of Equinox's
own layers (eqx.nn.Conv2d on [t; z], eqx.nn.GroupNorm), values and gradients."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.fields.conv_odefunc import ConvODEFunc


def _equinox_field(f, t, z):
    """Chen et al.'s f(t, z) written with Equinox's layers on (C, H, W)."""
    def eqx_gn(n):
        m = eqx.nn.GroupNorm(n.groups, n.channels, n.eps, dtype=n.weight.dtype)
        return eqx.tree_at(lambda k: (k.weight, k.bias), m, (n.weight, n.bias))

    def concat_conv(c, h):
        tt = jnp.full((1,) + h.shape[1:], t, h.dtype)
        return c.conv(jnp.concatenate([tt, h], axis=0))

    h = concat_conv(f.conv1, f.activation(eqx_gn(f.norm1)(z)))
    h = concat_conv(f.conv2, f.activation(eqx_gn(f.norm2)(h)))
    return eqx_gn(f.norm3)(h)


def test_field_equals_equinox_composition_in_float64(key):
    with jax.enable_x64(True):
        kf, kz, kg = jax.random.split(key, 3)
        f = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a,
                                   ConvODEFunc(8, max_groups=4, key=kf))
        z = jax.random.normal(kz, (2, 8, 5, 5), jnp.float64)
        g = jax.random.normal(kg, z.shape, jnp.float64)
        t = jnp.float64(0.37)

        def loss(fn, f_, z_):
            return jnp.sum(g * jax.vmap(lambda e: fn(f_, t, e))(z_))

        ours = jax.jit(jax.value_and_grad(lambda f_, z_: loss(lambda m, tt, e: m(tt, e), f_, z_),
                                          argnums=(0, 1)))(f, z)
        ref = jax.jit(jax.value_and_grad(lambda f_, z_: loss(_equinox_field, f_, z_), argnums=(0, 1)))(f, z)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
        # the channels-last entry point is the same function in the other layout
        hwc = jax.vmap(lambda e: f.channels_last(t, e))(jnp.transpose(z, (0, 2, 3, 1)))
        np.testing.assert_allclose(jnp.transpose(hwc, (0, 3, 1, 2)), jax.vmap(lambda e: f(t, e))(z),
                                   rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(H, W, 8\)"):
        f.channels_last(t, z[0])  # a channel-first example: the expected layout is named
