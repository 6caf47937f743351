"""The convolutional ODE function of Chen et al. (2018), used by the ODE-Nets of
Carrara et al. (Sec. 3) and the ODE-Net baseline of Tomen et al. (Sec. 4)."""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.nn.layers import ConcatConv2d, GroupRule


def _shape_hint(shape, channels: int) -> str:
    if shape is None:
        return "pass one array of shape (C, H, W)"
    if len(shape) == 4 and shape[1] == channels:
        return "vmap over the batch axis (ODEBlock.batched does)"
    if len(shape) == 3:
        return f"build the field with channels={shape[0]} or fix the state"
    return "pass one example of shape (C, H, W)"


def check_image_state(owner: str, z, channels: int) -> None:
    """Trace-time check of a convolutional field's state: one float example of shape
    (channels, H, W).  A ValueError / TypeError names `owner`, the expected and the
    received shape or dtype (instead of a reshape error inside the group norm)."""
    shape = getattr(z, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] != channels:
        got = shape if shape is not None else type(z).__name__
        raise ValueError(f"{owner}: expected a state of shape ({channels}, H, W), got {got}; "
                         f"{_shape_hint(shape, channels)}.")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{owner}: the state must be a float array, got dtype {z.dtype}; "
                        "cast it, e.g. z.astype(jnp.float32).")


class ConvODEFunc(eqx.Module):
    """f(t, z) = GN(ConcatConv(t, act(GN(ConcatConv(t, act(GN(z))))))).

    GroupNorm -> act -> ConcatConv3x3 -> GroupNorm -> act -> ConcatConv3x3 -> GroupNorm,
    where ConcatConv appends t as a constant input channel (``ConcatConv2d``).
    Acts on one example of shape (channels, H, W); H and W are preserved.  Inside, the
    evaluation is channels-last (`channels_last`): on XLA:CPU this removes the layout
    copies around each convolution and its gradients (docs/results/field_cost.md).

    **Arguments:** `channels`; `norm` (the `GroupRule` of the three GroupNorms;
    default min(max_groups, channels) groups, with `max_groups` 32 as in the
    papers); `activation` (ReLU in Chen et al. and Carrara et al., CELU in the DCN
    models); `key`.
    """

    norm1: eqx.nn.GroupNorm
    conv1: ConcatConv2d
    norm2: eqx.nn.GroupNorm
    conv2: ConcatConv2d
    norm3: eqx.nn.GroupNorm
    activation: Callable = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(self, channels: int, *, max_groups: int = 32, norm: GroupRule | None = None,
                 activation: Callable = jax.nn.relu, key):
        k1, k2 = jax.random.split(key)
        norm = GroupRule("min", max_groups) if norm is None else norm
        self.norm1 = norm(channels)
        self.conv1 = ConcatConv2d(channels, channels, 3, 1, 1, key=k1)
        self.norm2 = norm(channels)
        self.conv2 = ConcatConv2d(channels, channels, 3, 1, 1, key=k2)
        self.norm3 = norm(channels)
        self.activation = activation
        self.channels = channels

    def __call__(self, t, z):
        check_image_state("ConvODEFunc", z, self.channels)
        return jnp.transpose(self.channels_last(t, jnp.transpose(z, (1, 2, 0))), (2, 0, 1))

    def channels_last(self, t, h):
        """The same f(t, h) on one channels-last example `h` of shape (H, W, channels),
        returned in that layout.  `__call__` evaluates through it (one layout change
        in, one out), so every convolution is a canonical NHWC one and every
        GroupNorm reduces in place, on every backend (`jaxode.nn.conv.conv2d_hwc`,
        `jaxode.nn.layers.GroupNorm.channels_last`)."""
        if getattr(h, "ndim", None) != 3 or h.shape[-1] != self.channels:
            raise ValueError(f"ConvODEFunc.channels_last: expected a state of shape (H, W, {self.channels}), "
                             f"got {getattr(h, 'shape', type(h).__name__)}.")
        h = self.conv1.channels_last(t, self.activation(self.norm1.channels_last(h)))
        h = self.conv2.channels_last(t, self.activation(self.norm2.channels_last(h)))
        return self.norm3.channels_last(h)
