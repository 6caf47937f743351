"""The convolutional ODE function of Chen et al. (2018), used by the ODE-Nets of
Carrara et al. (Sec. 3) and the ODE-Net baseline of Tomen et al. (Sec. 4)."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax

from jaxode.nn.layers import ConcatConv2d, group_norm


class ConvODEFunc(eqx.Module):
    """f(t, z) = GN(ConcatConv(t, act(GN(ConcatConv(t, act(GN(z))))))).

    GroupNorm -> act -> ConcatConv3x3 -> GroupNorm -> act -> ConcatConv3x3 -> GroupNorm,
    where ConcatConv appends t as a constant input channel (``ConcatConv2d``).
    Acts on one example of shape (channels, H, W); H and W are preserved.

    **Arguments:** `channels`; `max_groups` (GroupNorm uses min(max_groups,
    channels) groups, 32 in the papers); `activation` (ReLU in Chen et al. and
    Carrara et al., CELU in the DCN models); `key`.
    """

    norm1: eqx.nn.GroupNorm
    conv1: ConcatConv2d
    norm2: eqx.nn.GroupNorm
    conv2: ConcatConv2d
    norm3: eqx.nn.GroupNorm
    activation: Callable = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(self, channels: int, *, max_groups: int = 32,
                 activation: Callable = jax.nn.relu, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = group_norm(channels, max_groups)
        self.conv1 = ConcatConv2d(channels, channels, 3, 1, 1, key=k1)
        self.norm2 = group_norm(channels, max_groups)
        self.conv2 = ConcatConv2d(channels, channels, 3, 1, 1, key=k2)
        self.norm3 = group_norm(channels, max_groups)
        self.activation = activation
        self.channels = channels

    def __call__(self, t, z):
        if z.ndim != 3 or z.shape[0] != self.channels:
            raise ValueError(
                f"ConvODEFunc: expected a state of shape ({self.channels}, H, W), got "
                f"{z.shape}; vmap over a batch, or build the field with channels={z.shape[0] if z.ndim else '?'}."
            )
        h = self.conv1(t, self.activation(self.norm1(z)))
        h = self.conv2(t, self.activation(self.norm2(h)))
        return self.norm3(h)
