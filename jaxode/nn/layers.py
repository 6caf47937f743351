"""Small layers shared by the models.  Every layer acts on one example in
channel-first layout ``(C, H, W)``; callers `jax.vmap` over a batch.  `GroupNorm` and
`ConcatConv2d` also have a ``channels_last`` method for one ``(H, W, C)`` example."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from jaxode.nn.conv import conv2d, conv2d_hwc


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


def _group_mean(y: jax.Array, groups: int | None) -> jax.Array:
    """The mean of each group, broadcastable against `y`.  ``groups=None``: `y` is
    ``(G, n)``, one group per row (channel-first layout).  Otherwise `y` is
    channels-last ``(n, C)`` with `groups` groups of consecutive channels: a column
    sum over the n positions (contiguous, vectorised along C), then a sum over each
    group's C / groups channels -- XLA:CPU runs this two-stage form several times
    faster than one reduction over the strided (n, G, C / G) view."""
    if groups is None:
        return jnp.mean(y, axis=-1, keepdims=True)
    n, c = y.shape
    per_channel = jnp.sum(y, axis=0)  # (C,)
    per_group = jnp.sum(per_channel.reshape(groups, c // groups), axis=1) / (n * (c // groups))
    return jnp.repeat(per_group, c // groups)[None, :]


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _standardise(y: jax.Array, eps: float, groups: int | None) -> jax.Array:
    """x_hat = (y - mu) / sqrt(sigma^2 + eps), with mu and sigma^2 = mean((y - mu)^2)
    the mean and (two-pass) variance of each group (`_group_mean`: rows of ``(G, n)``,
    or `groups` channel groups of a channels-last ``(n, C)``)."""
    c = y - _group_mean(y, groups)
    return c * lax.rsqrt(_group_mean(c * c, groups) + eps)


@_standardise.defjvp
def _standardise_jvp(eps, groups, primals, tangents):
    """d x_hat = (dy - mean(dy) - x_hat mean(x_hat dy)) / sqrt(sigma^2 + eps).

    The tangent is linear in dy with two group means, so its transpose (the VJP JAX
    derives in reverse mode) is two group sums and broadcasts, instead of the
    derivative of the mean and the variance taken through the primal formula."""
    (y,), (dy,) = primals, tangents
    mean = lambda a: _group_mean(a, groups)
    c = y - mean(y)
    inv = lax.rsqrt(mean(c * c) + eps)
    x_hat = c * inv
    return x_hat, inv * (dy - mean(dy) - x_hat * mean(x_hat * dy))


_MISSING = object()


class GroupNorm(eqx.nn.GroupNorm):
    """``equinox.nn.GroupNorm`` (Wu & He 2018) in a formulation that XLA:CPU runs faster.

    y_c = gamma_c (x_c - mu_g) / sqrt(sigma_g^2 + eps) + beta_c, with mu_g and sigma_g^2
    the mean and variance over the channels of group g and all positions.

    Same fields, parameters and function as Equinox's module (values and gradients
    agree to float32 rounding, tests/test_layers_groupnorm.py).  It differs in how
    the program is written: each group is one row of a ``(groups, n)`` matrix
    (Equinox reduces a ``(groups, C/groups, H, W)`` array per group under `vmap`,
    with `jnp.var` repeating the mean), and the standardisation has its own JVP
    (`_standardise`).  Inside a solver loop on the 2-core CPU this made GroupNorm
    forward + VJP about 1.5x faster and the Chen field's forward + VJP about 10%
    faster (`benchmarks/profile_field.py`, docs/results/benchmarks.md, Issue 8).
    Acts on one example ``(channels, ...)``; `jax.vmap` over a batch.  `channels_last`
    is the same normalisation of a channels-last example ``(..., channels)`` (used by
    `jaxode.fields.ConvODEFunc`, docs/results/field_cost.md).
    """

    def __call__(self, x, state=_MISSING, *, key=None):
        """**Arguments:** `x` of shape ``(channels, ...)``; `state` (ignored, returned
        unchanged if given, as in `equinox.nn.GroupNorm`); `key` (ignored).
        Computes in at least float32 and returns `x`'s dtype, as Equinox does."""
        del key
        channels = x.shape[0]
        if self.channels is not None and channels != self.channels:
            raise ValueError(f"GroupNorm: expected {self.channels} channels, got an input of shape {x.shape}.")
        if channels % self.groups:
            raise ValueError(f"GroupNorm: {channels} channels cannot be split into {self.groups} groups.")
        return self._normalise(x, state, x.reshape(self.groups, -1), None, 0)

    def channels_last(self, x):
        """The same GroupNorm of one channels-last example ``(..., channels)`` (for
        example ``(H, W, C)``), returned in that layout: the groups are the slices
        of consecutive channels on the last axis, reduced without a transpose."""
        channels = x.shape[-1]
        if self.channels is not None and channels != self.channels:
            raise ValueError(f"GroupNorm.channels_last: expected {self.channels} channels on the "
                             f"last axis, got an input of shape {x.shape}.")
        if channels % self.groups:
            raise ValueError(f"GroupNorm: {channels} channels cannot be split into {self.groups} groups.")
        return self._normalise(x, _MISSING, x.reshape(-1, channels), self.groups, x.ndim - 1)

    def _normalise(self, x, state, grouped, groups, channel_axis):
        """Standardise `grouped` (a reshape of `x`; `_group_mean` says how `groups`
        reads it), apply the affine map
        along `channel_axis` of `x`; at least float32 inside, `x`'s dtype out."""
        orig_dtype = x.dtype
        with jax.numpy_dtype_promotion("standard"):
            dtype = jnp.result_type(x.dtype, jnp.float32)
        out = _standardise(grouped.astype(dtype), self.eps, groups).reshape(x.shape)
        if self.channelwise_affine:
            shape = [1] * x.ndim
            shape[channel_axis] = x.shape[channel_axis]
            out = (self.weight.astype(dtype).reshape(shape) * out
                   + self.bias.astype(dtype).reshape(shape))
        out = out.astype(orig_dtype)
        return out if state is _MISSING else (out, state)


def group_norm(channels: int, max_groups: int = 32) -> GroupNorm:
    """GroupNorm with ``min(max_groups, channels)`` groups (affine), the
    normalisation of Chen et al.'s ODE-Net, Carrara et al. and Tomen et al.
    `group_norm_groups` checks the width; the module is `GroupNorm`, Equinox's
    with a faster XLA:CPU formulation."""
    return GroupNorm(group_norm_groups(channels, max_groups), channels)


@dataclasses.dataclass(frozen=True)
class GroupRule:
    """How a family's GroupNorm layers split C channels into groups.

    - ``GroupRule("min", 32)``: min(32, C) groups (Wu & He's default; Chen et al.,
      Carrara et al. and all Tomen et al. scripts but one), i.e. `group_norm`;
    - ``GroupRule("per_channel")``: C groups of one channel (Tomen et al.'s DCN-full
      script, ``nn.GroupNorm(dim, dim)``);
    - ``GroupRule("divisor", 32)``: the largest divisor of C that is at most 32 (our
      SegNode choice, `jaxode.nn.hrnet`).

    A model family names one rule per layer kind in its config (for example
    `jaxode.models.dcn.DCNSpec.norm`); ``rule(channels)`` builds the layer.
    """

    kind: str = "min"
    max_groups: int = 32

    def __post_init__(self):
        if self.kind not in ("min", "per_channel", "divisor"):
            raise ValueError(f"GroupRule: kind must be 'min', 'per_channel' or 'divisor', "
                             f"got {self.kind!r}.")

    def groups(self, channels: int) -> int:
        """The group count for `channels` channels."""
        if self.kind == "min":
            return group_norm_groups(channels, self.max_groups)
        c = group_norm_groups(channels, channels)  # only checks that c is a positive int
        if self.kind == "per_channel":
            return c
        return max(g for g in range(1, min(self.max_groups, c) + 1) if c % g == 0)

    def __call__(self, channels: int) -> GroupNorm:
        return GroupNorm(self.groups(channels), channels)


#: GroupNorm(min(32, C), C): Chen et al., Carrara et al., most DCN scripts.
MIN32 = GroupRule("min", 32)
#: GroupNorm(C, C): the DCN-full script of Tomen et al.
PER_CHANNEL = GroupRule("per_channel")


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

    def channels_last(self, t, x):
        """The same layer on one channels-last example `x` ``(H, W, C)``, returning
        ``(H_out, W_out, out_channels)``: t is the first of C + 1 channels on the last
        axis and the convolution is `jaxode.nn.conv.conv2d_hwc` (no layout copies);
        with `fast=False`, Equinox's convolution between two transposes."""
        if x.ndim != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ConcatConv2d.channels_last expects one example of shape (H, W, C={self.in_channels}), "
                f"got {x.shape}; vmap over a batch."
            )
        if not self.fast:  # Equinox's convolution, channel-first (for comparisons)
            return jnp.transpose(self(t, jnp.transpose(x, (2, 0, 1))), (1, 2, 0))
        tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1] + (1,))
        xt = jnp.concatenate([tt, x], axis=-1)
        y = conv2d_hwc(xt, self.conv.weight, self.conv.stride, self.conv.padding)
        if self.conv.use_bias:
            y = y + self.conv.bias.reshape(-1)
        return y
