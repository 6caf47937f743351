"""PyTorch / torchdiffeq twins of jaxode modules, with weights copied from the
Equinox modules, so that a benchmark or a test can run both frameworks on the same
model with the same parameters.

- `copy_conv2d`, `copy_group_norm`, `copy_linear`: one Equinox layer -> one torch
  layer (weights copied, float32).
- `TorchConcatConv2d`, `TorchConvODEFunc`: the ODE function of Chen et al. (2018)
  (`jaxode.fields.conv_odefunc.ConvODEFunc`) in torch, built ``from_jax``.
- `CountingFunc`: wraps a torch vector field and counts its evaluations (the NFE of
  torchdiffeq's forward and adjoint solves).

torch is imported lazily by the functions that need it, so importing this module
costs nothing when torch is absent.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "to_torch",
    "copy_conv2d",
    "copy_group_norm",
    "copy_linear",
    "TorchConcatConv2d",
    "TorchConvODEFunc",
    "CountingFunc",
]


def to_torch(x):
    """A JAX (or NumPy) array as a float32 torch tensor (a copy)."""
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def copy_conv2d(conv):
    """`equinox.nn.Conv2d` -> `torch.nn.Conv2d` with the same weights.  Equinox and
    torch share the (out, in, kh, kw) kernel layout; Equinox's bias is (out, 1, 1)."""
    import torch

    out_c, in_c, kh, kw = conv.weight.shape
    if any(lo != hi for lo, hi in conv.padding):
        raise ValueError(f"copy_conv2d: asymmetric padding {conv.padding} has no torch.nn.Conv2d twin.")
    t = torch.nn.Conv2d(
        in_c * conv.groups, out_c, (kh, kw), stride=tuple(conv.stride),
        padding=tuple(lo for lo, _ in conv.padding), dilation=tuple(conv.dilation),
        groups=conv.groups, bias=conv.use_bias,
    )
    with torch.no_grad():
        t.weight.copy_(to_torch(conv.weight))
        if conv.use_bias:
            t.bias.copy_(to_torch(conv.bias).reshape(-1))
    return t


def copy_group_norm(norm):
    """`equinox.nn.GroupNorm` -> `torch.nn.GroupNorm` (same groups, eps, affine)."""
    import torch

    affine = norm.weight is not None
    t = torch.nn.GroupNorm(norm.groups, norm.channels, eps=norm.eps, affine=affine)
    if affine:
        with torch.no_grad():
            t.weight.copy_(to_torch(norm.weight))
            t.bias.copy_(to_torch(norm.bias))
    return t


def copy_linear(linear):
    """`equinox.nn.Linear` -> `torch.nn.Linear` (both store weight as (out, in))."""
    import torch

    t = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.use_bias)
    with torch.no_grad():
        t.weight.copy_(to_torch(linear.weight))
        if linear.use_bias:
            t.bias.copy_(to_torch(linear.bias))
    return t


def _torch_module_base():
    import torch

    return torch.nn.Module


class TorchConcatConv2d(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.nn.layers.ConcatConv2d`: concatenate a constant t
    channel in front of the input, then convolve (batched, NCHW)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    @classmethod
    def from_jax(cls, layer):
        return cls(copy_conv2d(layer.conv))

    def forward(self, t, x):
        import torch

        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))


class TorchConvODEFunc(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.conv_odefunc.ConvODEFunc`:
    f(t, z) = GN(ConcatConv(t, act(GN(ConcatConv(t, act(GN(z))))))).
    Only ReLU is supported (the activation of Chen et al. and Carrara et al.)."""

    def __init__(self, norm1, conv1, norm2, conv2, norm3):
        import torch

        super().__init__()
        self.norm1, self.conv1, self.norm2, self.conv2, self.norm3 = norm1, conv1, norm2, conv2, norm3
        self.act = torch.nn.ReLU()

    @classmethod
    def from_jax(cls, func):
        import jax

        if func.activation is not jax.nn.relu:
            raise ValueError(
                f"TorchConvODEFunc supports activation=jax.nn.relu only, got {func.activation!r}."
            )
        return cls(
            copy_group_norm(func.norm1), TorchConcatConv2d.from_jax(func.conv1),
            copy_group_norm(func.norm2), TorchConcatConv2d.from_jax(func.conv2),
            copy_group_norm(func.norm3),
        )

    def forward(self, t, z):
        h = self.conv1(t, self.act(self.norm1(z)))
        h = self.conv2(t, self.act(self.norm2(h)))
        return self.norm3(h)


class CountingFunc(_torch_module_base()):  # type: ignore[misc]
    """Wraps a torch vector field ``f(t, z)`` and counts calls in `nfe`."""

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.func(t, z)
