"""A 2-D convolution whose derivatives stay fast inside XLA:CPU loops.

Every adaptive ODE solve is a ``lax.while_loop``, and the backsolve adjoint
(`jaxode.ode`) evaluates the vector field and its vector-Jacobian product inside
one.  On XLA:CPU a convolution is only lowered to the fast kernel (YNNPACK in jax
0.10.2, Eigen before; `benchmarks/profile_field.py`) when its operands are in the
canonical layout -- input ``(N, H, W, C)``, kernel
``(kh, kw, I, O)``, output ``(N, H, W, C)``.  Outside loops XLA inserts the
transposes itself; inside a loop body it does not, and a convolution in another
layout falls back to a generic kernel that measured 10-25x slower here (see
``docs/results/benchmarks.md``).  Equinox's ``Conv2d`` works in ``(C, H, W)`` /
``(O, I, kh, kw)`` layout, and the convolutions that JAX's autodiff derives for
the input and weight gradients are not canonical either, whatever the forward
layout.

`conv2d` computes exactly the same function as ``lax.conv_general_dilated`` but

- the forward pass is written in the canonical layout, and
- its derivative is given by a `jax.custom_jvp` whose two tangent terms,
  d(x) -> conv(dx, W) and d(W) -> conv(x, dW), are written in the layouts whose
  *transposes* (taken by JAX's own transpose rules during reverse-mode autodiff)
  are canonical: the input gradient becomes a canonical convolution of the
  output cotangent with the flipped kernel, and the weight gradient becomes a
  canonical convolution of the inputs, with the batch as contraction axis, against
  the output cotangents.

Because the rule is a JVP (not a VJP), `jax.vmap` over examples -- the project's
convention, one ``(C, H, W)`` example per call -- is applied *before*
linearisation and transposition: the weight gradient is one convolution that
contracts over the whole batch, not a per-example gradient summed afterwards.
The residual kept for the backward pass is the input itself (no image patches).

The custom-JVP rule is a workaround for XLA:CPU and is not imposed elsewhere: `conv2d`
asks `conv_path` *at trace time* which path to take -- ``"custom_jvp"`` when JAX's
default backend is the CPU, ``"xla"`` (plain ``lax.conv_general_dilated`` in NCHW /
OIHW, differentiated by JAX and laid out by XLA's GPU / TPU layout assignment, which
chooses cuDNN's or the TPU's preferred layouts itself) on any other backend.  Both
paths compute the same function (`tests/test_conv.py`).  `force_conv_path` overrides
the choice for the functions traced inside it (a jitted function already traced keeps
its path: the choice is part of the trace, not of the jit cache key).

`conv2d_hwc` is the same convolution for a channels-last example ``(H, W, C)``: the
custom JVP above is written in that layout, and `conv2d` is it between two transposes.
A model that keeps its activations channels-last (`jaxode.fields.ConvODEFunc` inside one
evaluation) skips the layout copies that XLA:CPU otherwise adds around every
convolution and gradient convolution (docs/results/field_cost.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

__all__ = ["conv2d", "conv2d_hwc", "reference_conv2d", "conv_path", "force_conv_path", "CONV_PATHS"]

CONV_PATHS = ("custom_jvp", "xla")
_FORCED: list[str] = []  # stack of force_conv_path choices, innermost last

Padding = tuple[tuple[int, int], tuple[int, int]]


def _pair(value, name) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}.")
    return value  # type: ignore[return-value]


def _padding(value) -> Padding:
    if isinstance(value, int):
        return ((value, value), (value, value))
    value = tuple(value)
    if len(value) == 2 and all(isinstance(v, int) for v in value):
        return ((value[0], value[0]), (value[1], value[1]))
    if len(value) == 2 and all(isinstance(v, Sequence) and len(v) == 2 for v in value):
        return (tuple(value[0]), tuple(value[1]))  # type: ignore[return-value]
    raise ValueError(
        "conv2d: padding must be an int, a pair of ints or a pair of (low, high) pairs, "
        f"got {value!r}."
    )


def _forward(x, w, stride, padding):
    """y[o] = sum_c W[o, c] * x[c] for one channels-last example x (H, W, C), in the
    canonical NHWC / HWIO layout."""
    wh = jnp.transpose(w, (2, 3, 1, 0))  # (kh, kw, I, O)
    y = lax.conv_general_dilated(
        x[None], wh, stride, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y[0]


def _tangent_x(dx, w, stride, padding):
    """conv(dx, W), with the kernel stored as (kh, kw, O, I): JAX's transpose rule
    swaps the kernel's I and O roles and flips it, so the input gradient is a
    convolution with a kernel laid out (kh, kw, I', O') -- canonical."""
    wt = jnp.transpose(w, (2, 3, 0, 1))  # (kh, kw, O, I)
    y = lax.conv_general_dilated(
        dx[None], wt, stride, padding, dimension_numbers=("NHWC", "HWOI", "NHWC")
    )
    return y[0]


def _tangent_w(x, dw, stride, padding):
    """conv(x, dW) in the layouts whose weight-transpose is canonical: input stored
    (C, H, W, N), kernel (I, kh, kw, O), output (H, W, N, O).  The transpose rule
    swaps batch and feature roles, giving the weight gradient as a convolution with
    input (C, H, W, N) [batch = C, feature = N], kernel = output cotangent
    (H, W, N, O) [I = N, O = O] and output (C, kh, kw, O): all canonical, with the
    batch N (merged in by `vmap`) as the contraction axis."""
    xh = jnp.transpose(x, (2, 0, 1))[..., None]  # (C, H, W, 1)
    wh = jnp.transpose(dw, (1, 2, 3, 0))  # (I, kh, kw, O)
    y = lax.conv_general_dilated(
        xh, wh, stride, padding, dimension_numbers=("CHWN", "IHWO", "HWNC")
    )
    return y[:, :, 0, :]


# The convolution y = conv(x, W) is bilinear, so its tangent is conv(dx, W) + conv(x, dW).
# Three custom-JVP functions compute conv(., .) in the three layouts (`_forward`,
# `_tangent_x`, `_tangent_w`), and all three share the rule below: the dx-term is always
# `_conv_x` and the dW-term always `_conv_w`, whose transposes are canonical.  Because the
# rule only calls these functions, derivatives of derivatives stay in them too: the
# reverse-over-forward product that trains the Jacobian regulariser (a `jax.jvp` inside
# the field, differentiated by the adjoint; `jaxode.ode._regularize`) runs canonical
# convolutions only.  (When a tangent term is transposed JAX inlines the function, so a
# first derivative is exactly the one `_tangent_x` / `_tangent_w` were written for.)
@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x, w, stride, padding):
    return _forward(x, w, stride, padding)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_x(dx, w, stride, padding):
    return _tangent_x(dx, w, stride, padding)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_w(x, dw, stride, padding):
    return _tangent_w(x, dw, stride, padding)


def _bilinear_rule(primal):
    """The JVP of conv in `primal`'s layout: d conv(x, W) = conv_x(dx, W) + conv_w(x, dW)."""

    def rule(stride, padding, primals, tangents):
        x, w = primals
        dx, dw = tangents
        y = primal(x, w, stride, padding)
        dy = None
        if not isinstance(dx, SymbolicZero):
            dy = _conv_x(dx, w, stride, padding)
        if not isinstance(dw, SymbolicZero):
            term = _conv_w(x, dw, stride, padding)
            dy = term if dy is None else dy + term
        if dy is None:
            dy = jnp.zeros_like(y)
        return y, dy

    return rule


for _f in (_conv, _conv_x, _conv_w):
    _f.defjvp(_bilinear_rule(_f), symbolic_zeros=True)
del _f


def _backend() -> str:
    """The backend a computation traced now will run on by default (a function of its
    own so that tests can stand in another backend)."""
    return jax.default_backend()


def conv_path(backend: str | None = None) -> str:
    """The convolution path `conv2d` takes when traced now: the innermost
    `force_conv_path` if any, else ``"custom_jvp"`` on the CPU backend and ``"xla"``
    on every other (``"gpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``, ...).

    **Arguments:** `backend`: a backend name to decide for (default: JAX's default
    backend now).
    """
    if _FORCED:
        return _FORCED[-1]
    return "custom_jvp" if (backend or _backend()) == "cpu" else "xla"


@contextlib.contextmanager
def force_conv_path(path: str) -> Iterator[None]:
    """Within the block, `conv2d` traces the given path (one of `CONV_PATHS`) whatever
    the backend: for tests and for comparing the two paths on one device."""
    if path not in CONV_PATHS:
        raise ValueError(f"force_conv_path: unknown path {path!r}; choose one of {CONV_PATHS}.")
    _FORCED.append(path)
    try:
        yield
    finally:
        _FORCED.pop()


def _check(name, x, weight, channel_axis, layout):
    if x.ndim != 3:
        raise ValueError(f"{name} expects one example of shape {layout}, got {x.shape}; "
                         "vmap over a batch.")
    c = x.shape[channel_axis]
    if weight.ndim != 4 or weight.shape[1] != c:
        raise ValueError(
            f"{name}: weight of shape {weight.shape} does not fit an input with "
            f"{c} channels; expected (O, {c}, kh, kw)."
        )


def conv2d(x, weight, stride=1, padding=0):
    """2-D cross-correlation of one example, fast to differentiate in XLA:CPU loops.

    y[o, i, j] = sum_{c, p, q} W[o, c, p, q] x_pad[c, s_0 i + p, s_1 j + q]

    **Arguments:**

    - `x`: one example, shape ``(C, H, W)`` (vmap over a batch).
    - `weight`: kernel ``(O, C, kh, kw)`` (Equinox / PyTorch layout).
    - `stride`: int or pair.
    - `padding`: int, pair, or pair of (low, high) pairs (zero padding).

    **Returns:** ``(O, H_out, W_out)``; values and gradients equal those of
    ``lax.conv_general_dilated`` in NCHW / OIHW layout (`reference_conv2d`).  The
    custom-JVP path is taken on the CPU backend only (`conv_path`, decided at trace
    time); elsewhere this *is* `reference_conv2d`.  On the CPU path the input and
    output are transposed to and from channels-last around the canonical kernel;
    a model that keeps its activations channels-last avoids those copies with
    `conv2d_hwc`.
    """
    _check("conv2d", x, weight, 0, "(C, H, W)")
    stride, padding = _pair(stride, "stride"), _padding(padding)
    if conv_path() == "xla":
        return reference_conv2d(x, weight, stride, padding)
    return jnp.transpose(_conv(jnp.transpose(x, (1, 2, 0)), weight, stride, padding), (2, 0, 1))


def conv2d_hwc(x, weight, stride=1, padding=0):
    """`conv2d` of one channels-last example: the same cross-correlation with `x` of
    shape ``(H, W, C)`` and the result ``(H_out, W_out, O)``; `weight` stays in the
    Equinox / PyTorch layout ``(O, C, kh, kw)`` (its transposes do not depend on the
    example and are hoisted out of solver loops by XLA).

    On the CPU backend this is the custom-JVP path of `conv2d` without its layout
    copies (forward and input gradient are canonical NHWC convolutions; only the
    weight gradient transposes the activations, as any layout must).  Elsewhere
    (`conv_path` ``"xla"``) it is plain ``lax.conv_general_dilated`` with NHWC / OIHW
    dimension numbers, whose physical layouts XLA's GPU / TPU layout assignment picks.
    Values and gradients equal `reference_conv2d` on the transposed input
    (tests/test_conv.py).
    """
    _check("conv2d_hwc", x, weight, 2, "(H, W, C)")
    stride, padding = _pair(stride, "stride"), _padding(padding)
    if conv_path() == "xla":
        y = lax.conv_general_dilated(x[None], weight, stride, padding,
                                     dimension_numbers=("NHWC", "OIHW", "NHWC"))
        return y[0]
    return _conv(x, weight, stride, padding)


def reference_conv2d(x, weight, stride=1, padding=0):
    """The same convolution by plain ``lax.conv_general_dilated`` (NCHW / OIHW), as
    Equinox's ``Conv2d`` computes it; the reference for tests and benchmarks."""
    y = lax.conv_general_dilated(
        x[None], weight, _pair(stride, "stride"), _padding(padding),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    return y[0]
