"""HRNetV2-style parts for SegNode and its residual baseline (Khoshsirat & Kambhamettu,
Sec. 3 and Fig. 1-2; HRNetV2 of Wang et al. 2019).

Every layer acts on one example in channel-first layout; a multi-resolution state is a
tuple of four maps ``(z_1, ..., z_4)`` with ``z_k`` of shape ``(C_k, H_k, W_k)``, where
``H_1, W_1`` is 1/4 of the input and each next branch halves it (rounding up, as a
stride-2 3x3 convolution with padding 1 does).  The paper's widths are
``C = (48, 96, 192, 384)``; tests and smoke runs use small ones.

Design choices (written down once here):

- **Pre-activation "small blocks".**  Fig. 2 says each small block is one set of
  normalisation, ReLU and convolution; we use that order (norm -> ReLU -> conv), so no
  module ends in a ReLU and the residual part of a module can take either sign, which
  an ODE vector field needs.
- **GroupNorm instead of BatchNorm**, everywhere (baseline too, so that the two models
  differ only in their main body).  GroupNorm does not depend on the batch, which the
  ODE field requires (the solver evaluates the field at intermediate states, and a
  batch-statistics layer would couple the examples and change between train and test).
  Groups: the largest divisor of C that is at most 32 (48 -> 24, 96/192/384 -> 32).
  The affine parameters are 2C per layer, the same count as BatchNorm's.
- **Convolutions have no bias** (each is followed by a norm or feeds a fused sum), as in
  HRNet; the class heads have a bias.
- **Time** (used only inside the ODE field): t enters as a constant extra input channel
  of every 3x3 convolution of the branches' residual blocks (`ConcatConv2d`, as in
  Chen et al.'s ODE-Net).  The fusion convolutions do not see t.
"""

from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxode.nn.conv import conv2d
from jaxode.nn.layers import ConcatConv2d, GroupRule

PAPER_WIDTHS = (48, 96, 192, 384)
STEM_CHANNELS = 64

State = tuple  # tuple of four (C_k, H_k, W_k) arrays


def group_norm_for(channels: int, max_groups: int = 32) -> eqx.nn.GroupNorm:
    """GroupNorm with the largest group count <= `max_groups` that divides `channels`."""
    if channels < 1:
        raise ValueError(f"group_norm_for: channels must be positive, got {channels}.")
    return eqx.nn.GroupNorm(GroupRule("divisor", max_groups).groups(channels), channels)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres
    (source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped at the edges)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    a = np.zeros((n_out, n_in), np.float32)
    a[np.arange(n_out), lo] += 1.0 - w
    a[np.arange(n_out), hi] += w
    return a


def resize_bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Bilinear up-sampling of one (C, H, W) map to (C, *hw), half-pixel centres (as
    PyTorch's ``align_corners=False`` and `jax.image.resize` when enlarging); the
    identity when the size already matches.

    Written as two small matrix products, y = A_h x A_w^T, with the interpolation
    matrices built at trace time: on the CPU this compiles several times faster than
    `jax.image.resize` inside the differentiated ODE solve.  No anti-aliasing, so use it
    to enlarge (all uses in the models do)."""
    hw = tuple(int(s) for s in hw)
    if tuple(x.shape[1:]) == hw:
        return x
    a_h = jnp.asarray(_interp_matrix(hw[0], x.shape[1]), x.dtype)
    a_w = jnp.asarray(_interp_matrix(hw[1], x.shape[2]), x.dtype)
    return jnp.einsum("hi,cij,wj->chw", a_h, x, a_w)


class NormActConv(eqx.Module):
    """One small block of Fig. 2: y = conv(ReLU(GroupNorm(x))), optionally with the
    time t as an extra constant input channel of the convolution."""

    norm: eqx.nn.GroupNorm
    conv: eqx.Module
    with_time: bool = eqx.field(static=True)
    activation: Callable = eqx.field(static=True, default=jax.nn.relu)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, *, with_time: bool = False, use_bias: bool = False,
                 max_groups: int = 32, key):
        self.norm = group_norm_for(in_channels, max_groups)
        pad = kernel_size // 2
        if with_time:
            self.conv = ConcatConv2d(in_channels, out_channels, kernel_size, stride, pad,
                                     use_bias=use_bias, key=key)
        else:
            self.conv = eqx.nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad,
                                      use_bias=use_bias, key=key)
        self.with_time = with_time

    def __call__(self, x: jax.Array, t=None) -> jax.Array:
        h = self.activation(self.norm(x))
        if self.with_time:
            if t is None:
                raise ValueError("NormActConv: this block was built with_time=True; pass t.")
            return self.conv(t, h)
        # jaxode.nn.conv.conv2d: the same values as Equinox's Conv2d, but in the layout
        # that XLA:CPU keeps fast inside the solver's while loop (the fusion convs of
        # SegNode's field run there)
        y = conv2d(h, self.conv.weight, self.conv.stride, self.conv.padding)
        return y + self.conv.bias if self.conv.use_bias else y


class BasicBlock(eqx.Module):
    """Pre-activation residual block of one branch: x + u2(u1(x)), with u1, u2 the
    3x3 small blocks (HRNet's BasicBlock, in pre-activation order)."""

    unit1: NormActConv
    unit2: NormActConv

    def __init__(self, channels: int, *, with_time: bool = False, max_groups: int = 32, key):
        k1, k2 = jax.random.split(key)
        self.unit1 = NormActConv(channels, channels, 3, with_time=with_time,
                                 max_groups=max_groups, key=k1)
        self.unit2 = NormActConv(channels, channels, 3, with_time=with_time,
                                 max_groups=max_groups, key=k2)

    def __call__(self, x, t=None):
        return x + self.unit2(self.unit1(x, t), t)


class Stem(eqx.Module):
    """Two stride-2 3x3 convolutions, 3 -> 64 -> 64, from the image to 1/4 resolution
    (Sec. 4.1; HRNetV2's stem): conv, then one GN-ReLU-conv small block."""

    conv1: eqx.nn.Conv2d
    unit2: NormActConv

    def __init__(self, in_channels: int = 3, channels: int = STEM_CHANNELS, *,
                 max_groups: int = 32, key):
        k1, k2 = jax.random.split(key)
        self.conv1 = eqx.nn.Conv2d(in_channels, channels, 3, 2, 1, use_bias=False, key=k1)
        self.unit2 = NormActConv(channels, channels, 3, 2, max_groups=max_groups, key=k2)

    def __call__(self, x):
        return self.unit2(self.conv1(x))


class Transition(eqx.Module):
    """The convolutions that make the four initial tensors from the stem output (Sec.
    3.2): z_1 = u_1(s) at 1/4 resolution, and z_k = u_k(z_{k-1}) with a stride-2 3x3
    small block for k = 2, 3, 4 (HRNet builds each new branch from the previous one)."""

    units: tuple[NormActConv, ...]

    def __init__(self, in_channels: int, widths: Sequence[int], *, max_groups: int = 32, key):
        keys = jax.random.split(key, len(widths))
        units = [NormActConv(in_channels, widths[0], 3, 1, max_groups=max_groups, key=keys[0])]
        for k in range(1, len(widths)):
            units.append(NormActConv(widths[k - 1], widths[k], 3, 2, max_groups=max_groups,
                                     key=keys[k]))
        self.units = tuple(units)

    def __call__(self, s) -> State:
        zs = [self.units[0](s)]
        for unit in self.units[1:]:
            zs.append(unit(zs[-1]))
        return tuple(zs)


class FuseDown(eqx.Module):
    """Fusion from a higher-resolution branch j to a lower one i > j: i - j stride-2
    3x3 small blocks, C_j -> C_j for all but the last, C_j -> C_i for the last."""

    units: tuple[NormActConv, ...]

    def __init__(self, c_from: int, c_to: int, steps: int, *, max_groups: int = 32, key):
        keys = jax.random.split(key, steps)
        self.units = tuple(
            NormActConv(c_from, c_to if s == steps - 1 else c_from, 3, 2,
                        max_groups=max_groups, key=keys[s])
            for s in range(steps)
        )

    def __call__(self, x, hw):
        for unit in self.units:
            x = unit(x)
        if tuple(x.shape[1:]) != tuple(hw):  # cannot happen for shapes made by Transition
            raise ValueError(f"FuseDown: got {x.shape[1:]}, expected spatial size {hw}.")
        return x


class FuseUp(eqx.Module):
    """Fusion from a lower-resolution branch j to a higher one i < j: a 1x1 small block
    C_j -> C_i, then bilinear up-sampling to branch i's size."""

    unit: NormActConv

    def __init__(self, c_from: int, c_to: int, *, max_groups: int = 32, key):
        self.unit = NormActConv(c_from, c_to, 1, 1, max_groups=max_groups, key=key)

    def __call__(self, x, hw):
        return resize_bilinear(self.unit(x), hw)


class HRModule(eqx.Module):
    """One HRNetV2 module with four (or any number of) parallel branches (Fig. 2).

    With b_k = B_k^{(n)} o ... o B_k^{(1)}(z_k) the branch outputs (n basic residual
    blocks each), the module computes

        M(z)_i = b_i + sum_{j != i} F_ij(b_j),

    with F_ij a 1x1 conv + bilinear up-sampling for j > i and strided 3x3 convs for
    j < i.  Because the blocks are residual and F_ii is the identity, M(z) = z + R(z);
    `residual` returns R(z) = M(z) - z, the part that SegNode integrates and that the
    baseline adds back (Eq. 1: h_{k+1} = h_k + R_k(h_k)).
    """

    branches: tuple[tuple[BasicBlock, ...], ...]
    fuse: tuple[tuple[eqx.Module | None, ...], ...]
    widths: tuple[int, ...] = eqx.field(static=True)
    with_time: bool = eqx.field(static=True)

    def __init__(self, widths: Sequence[int], blocks: int = 4, *, with_time: bool = False,
                 max_groups: int = 32, key):
        widths = tuple(int(c) for c in widths)
        if not widths or any(c < 1 for c in widths):
            raise ValueError(f"HRModule: widths must be positive channel counts, got {widths}.")
        if blocks < 1:
            raise ValueError(f"HRModule: blocks must be >= 1, got {blocks}.")
        n = len(widths)
        kb, kf = jax.random.split(key)
        bkeys = jax.random.split(kb, n * blocks).reshape(n, blocks, -1)
        self.branches = tuple(
            tuple(BasicBlock(widths[i], with_time=with_time, max_groups=max_groups,
                             key=bkeys[i, b]) for b in range(blocks))
            for i in range(n)
        )
        fkeys = jax.random.split(kf, n * n).reshape(n, n, -1)
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j == i:
                    row.append(None)
                elif j > i:
                    row.append(FuseUp(widths[j], widths[i], max_groups=max_groups,
                                      key=fkeys[i, j]))
                else:
                    row.append(FuseDown(widths[j], widths[i], i - j, max_groups=max_groups,
                                        key=fkeys[i, j]))
            fuse.append(tuple(row))
        self.fuse = tuple(fuse)
        self.widths = widths
        self.with_time = with_time

    def check_state(self, z: State) -> None:
        if not isinstance(z, (tuple, list)) or len(z) != len(self.widths):
            raise ValueError(
                f"HRModule: expected a tuple of {len(self.widths)} feature maps, got "
                f"{type(z).__name__} of length {len(z) if hasattr(z, '__len__') else '?'}."
            )
        for k, (x, c) in enumerate(zip(z, self.widths)):
            if x.ndim != 3 or x.shape[0] != c:
                raise ValueError(
                    f"HRModule: branch {k} must be one example of shape ({c}, H, W), got "
                    f"{x.shape}; vmap over a batch."
                )

    def __call__(self, z: State, t=None) -> State:
        """M(z): the module's output (same shapes as z)."""
        self.check_state(z)
        b = []
        for x, blocks in zip(z, self.branches):
            for block in blocks:
                x = block(x, t)
            b.append(x)
        out = []
        for i, row in enumerate(self.fuse):
            hw = b[i].shape[1:]
            y = b[i]
            for j, f in enumerate(row):
                if f is not None:
                    y = y + f(b[j], hw)
            out.append(y)
        return tuple(out)

    def residual(self, z: State, t=None) -> State:
        """R(z) = M(z) - z."""
        return tuple(m - x for m, x in zip(self(z, t), z))


class SegHead(eqx.Module):
    """Per-branch class scores, summed (Fig. 1): y = sum_k up(conv1x1_k(ReLU(GN(z_k)))),
    each branch's scores bilinearly up-sampled to branch 1's (1/4) size, the sum then
    up-sampled to the input size."""

    units: tuple[NormActConv, ...]

    def __init__(self, widths: Sequence[int], num_classes: int, *, max_groups: int = 32, key):
        keys = jax.random.split(key, len(widths))
        self.units = tuple(
            NormActConv(c, num_classes, 1, 1, use_bias=True, max_groups=max_groups, key=k)
            for c, k in zip(widths, keys)
        )

    def __call__(self, z: State, out_hw: tuple[int, int]) -> jax.Array:
        hw = z[0].shape[1:]
        y = sum(resize_bilinear(unit(x), hw) for unit, x in zip(self.units, z))
        return resize_bilinear(y, out_hw)
