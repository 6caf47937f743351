"""Small layers shared by the models.  Every layer acts on one example in
channel-first layout ``(C, H, W)``; callers `jax.vmap` over a batch."""

from __future__ import annotations

import operator
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.nn.conv import conv2d


def group_norm_groups(channels: int, max_groups: int = 32) -> int:
    """The group count `group_norm` uses for `channels`: ``min(max_groups, channels)``.

    The rule, in one place (the command lines check their width flags with it before
    building a model): a width is valid when it is a positive int that is at most
    `max_groups` or a multiple of `max_groups`.  Anything else is a ValueError that
    names the width and the nearest valid ones."""
    try:  # ints and NumPy ints; not floats, and not bools (True is no width)
        c = None if isinstance(channels, bool) else operator.index(channels)
    except TypeError:
        c = None
    if c is None or c < 1:
        raise ValueError(f"group_norm: channels must be a positive int, got {channels!r}.")
    groups = min(max_groups, c)
    if c % groups:
        low, high = groups * (c // groups), groups * (c // groups + 1)
        raise ValueError(
            f"group_norm: {c} channels cannot be split into {groups} groups; use at most "
            f"{max_groups} channels or a multiple of {max_groups} (e.g. {low} or {high})."
        )
    return groups


def group_norm(channels: int, max_groups: int = 32) -> eqx.nn.GroupNorm:
    """GroupNorm with ``min(max_groups, channels)`` groups (affine), the
    normalisation of Chen et al.'s ODE-Net, Carrara et al. and Tomen et al.
    `group_norm_groups` checks the width."""
    return eqx.nn.GroupNorm(group_norm_groups(channels, max_groups), channels)


def norm_act(norm: eqx.nn.GroupNorm, act: Callable, x: jax.Array) -> jax.Array:
    """act(GroupNorm(x)): the pre-activation pattern used throughout the papers."""
    return act(norm(x))


class ConcatConv2d(eqx.Module):
    """A 2-D convolution that sees the time t as an extra constant input channel.

    y = W * [t 1; x] + b, i.e. the input (C, H, W) is extended to (C + 1, H, W) with
    a first channel filled with t (Chen et al. 2018, the ``ConcatConv2d`` of their
    ODE-Net; Carrara et al. Sec. 3).  The parameters live in ``conv`` (an Equinox
    ``Conv2d`` over C + 1 channels: weight (out, C + 1, kh, kw), bias (out, 1, 1)),
    but the convolution itself is `jaxode.nn.conv.conv2d`, which gives the same
    values and gradients and stays fast when differentiated inside the while loop of
    an ODE solve on CPU (see that module).  `fast=False` uses Equinox's own
    convolution instead (for comparisons).
    """

    conv: eqx.nn.Conv2d
    in_channels: int = eqx.field(static=True)
    fast: bool = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1,
                 use_bias=True, *, key, fast: bool = True):
        self.in_channels = in_channels
        self.fast = fast
        self.conv = eqx.nn.Conv2d(in_channels + 1, out_channels, kernel_size, stride,
                                  padding, use_bias=use_bias, key=key)

    def __call__(self, t, x):
        if x.ndim != 3 or x.shape[0] != self.in_channels:
            raise ValueError(
                f"ConcatConv2d expects one example of shape (C={self.in_channels}, H, W), "
                f"got {x.shape}; vmap over a batch."
            )
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), (1,) + x.shape[1:])
        xt = jnp.concatenate([tt, x], axis=0)
        if not self.fast:
            return self.conv(xt)
        y = conv2d(xt, self.conv.weight, self.conv.stride, self.conv.padding)
        if self.conv.use_bias:
            y = y + self.conv.bias
        return y
