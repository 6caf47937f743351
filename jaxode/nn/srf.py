"""Structured receptive fields (SRFs): convolutions whose filters are weighted sums
of Gaussian derivatives (the multiscale local N-jet; Tomen, Pintea & van Gemert 2021,
Sec. 2.2, eq. 1, and supplement A.1).

A filter from input channel i to output channel j is

    F^{ji}(x, y; sigma) = sum_{l + k <= N} alpha[(l, k), i, j] * G^{l,k}(x, y; sigma),
    G^{l,k}(x, y; sigma) = sigma^(l+k) * d^l/dx^l d^k/dy^k G(x, y; sigma),

with learnable coefficients alpha and a learnable scale sigma = 2^scale.  The 2-D
basis is separable (supplement eq. A.5): G^{l,k}(x, y) = g_l(x) g_k(y), where the
1-D Gaussian g_0 is sampled on the integer grid and divided by its sum over the
truncated grid, and the n-th derivative is

    g_n(x) = (-1 / (sqrt(2) sigma))^n H_n(x / (sqrt(2) sigma)) g_0(x) * sigma^n

with the physicists' Hermite polynomials H_n (so g_1 = -(x/sigma) g_0 and
g_2 = (x^2/sigma^2 - 1) g_0).  Axis convention: x runs along the image width (last
axis), y along the height; basis order for N = 2 is (l, k) = (0,0), (1,0), (0,1),
(2,0), (1,1), (0,2), i.e. 1, x, y, xx, xy, yy.

Kernel support and `jit`
------------------------
The paper samples the filter on [-2 sigma, 2 sigma]; the reference code uses the
half-width r(sigma) = ceil(2 sigma + 0.5) (3x3 at sigma 0.25, 7x7 at 1, 11x11 at 2),
computed without gradient.  Under `jit` an array's shape must be static, so every
SRF layer here samples its basis on a grid of a *static* half-width
`grid_half_width` and, inside the computation, zeroes the taps with |x| > r(sigma)
*before* normalising the Gaussian.  The resulting kernel is exactly the reference's
(2r+1)x(2r+1) kernel padded with zeros, and a zero-padded kernel with "same"
padding gives exactly the same convolution, so the result does not depend on the
grid size as long as grid_half_width >= r(sigma).  Ways to apply the filters:

- ``refresh_support(model, mode="separable")`` (the default of
  `jaxode.models.dcn.build_model`): the filters are never built; the layer mixes the
  input channels per basis function and applies the 1-D functions g_l, g_k as
  matrices along the width and the height (`_separable_srf_conv`).  Exact for any
  sigma below the (large) grid bound, shapes fixed, cost independent of sigma.
- ``refresh_support(model, mode="exact")``: set each layer's grid to its current
  r(sigma) (host-side, after each optimiser step).  No wasted taps; `eqx.filter_jit`
  recompiles whenever a layer's size changes (sizes change a few times per run).
- ``refresh_support(model, mode="max", max_half_width=R)``: one fixed grid for all
  layers, never recompiles, pays for the zero taps.
- ``refresh_support(model, mode="switch", max_half_width=R)``: fixed shapes, and a
  `jax.lax.switch` over the sizes 3x3 ... (2R+1)x(2R+1) runs the exact-size
  convolution chosen from sigma at run time (no recompilation, no wasted taps,
  a larger compiled program).

The measured cost of the choices is in ``docs/dcn_kernel_size.md``.  When
r(sigma) exceeds the grid, the filter is truncated at the grid (it is no longer the
reference's filter); `support_overflow(model)` reports it, and `refresh_support`
with ``mode="exact"`` removes it.

Layers:

- `SRFConv2d`: one shared sigma per layer (DCN-ODE, DCN-full, ResNet-SRF models).
- `SRFConv2dPerFilter`: one sigma per (input, output) pair on a fixed 7x7 support,
  each filter's Gaussian normalised over that support (the "DCN sigma^ji" model,
  supplement A.2).
- `MetaSRFConv2d`: sigma(t) and optionally alpha(t) as functions of the block time
  (Table 4; supplement A.2): t clipped to [-0.5, 2.5], t_s = 0.5 t,
  sigma = 2^(s t_s + b) or 2^(s2 t_s^2 + s t_s + b), alpha(t) = alpha t_s + alpha_bias.

All layers are cross-correlations without bias acting on one example (C, H, W).
Layers with ``time_channel=True`` see the time t as an extra constant first input
channel (as `jaxode.nn.layers.ConcatConv2d`), so they have in_channels + 1 inputs.
"""

from __future__ import annotations

import copy
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from jaxode.nn.conv import conv2d

__all__ = [
    "basis_orders",
    "num_basis",
    "half_width",
    "gaussian_derivatives_1d",
    "njet_basis",
    "srf_filters",
    "SRFConv2d",
    "SRFConv2dPerFilter",
    "MetaSRFConv2d",
    "refresh_support",
    "support_overflow",
    "srf_layers",
]

T_CLIP = (-0.5, 2.5)
# Grid bound of the separable support: exact (untruncated) for sigma < 15.75, far
# beyond the scales learned on 32 x 32 images; only the 1-D filters have this length.
SEPARABLE_MAX_HALF_WIDTH = 32
T_SCALE = 0.5


# ----------------------------------------------------------------------- the basis


def basis_orders(order: int) -> list[tuple[int, int]]:
    """The derivative orders (l, k) of the N-jet up to total order `order`, grouped by
    total order: N = 2 gives (0,0), (1,0), (0,1), (2,0), (1,1), (0,2)."""
    if not isinstance(order, int) or order < 0:
        raise ValueError(f"N-jet order must be a non-negative int, got {order!r}.")
    return [(n - k, k) for n in range(order + 1) for k in range(n + 1)]


def num_basis(order: int) -> int:
    """(N + 1)(N + 2) / 2 basis functions up to order N (six at N = 2)."""
    return len(basis_orders(order))


def half_width(sigma) -> jax.Array:
    """r(sigma) = ceil(2 sigma + 0.5): the support half-width of the reference code."""
    return jnp.ceil(2.0 * sigma + 0.5)


def half_width_host(sigma: float) -> int:
    """`half_width` for a Python float (used outside `jit` to size grids)."""
    return int(math.ceil(2.0 * float(sigma) + 0.5))


def _hermite(n: int, u):
    """Physicists' Hermite polynomial H_n(u) by the recursion H_{n+1} = 2u H_n - 2n H_{n-1}."""
    h_prev, h = jnp.ones_like(u), 2.0 * u
    if n == 0:
        return h_prev
    for m in range(1, n):
        h_prev, h = h, 2.0 * u * h - 2.0 * m * h_prev
    return h


def gaussian_derivatives_1d(sigma, grid_half_width: int, order: int, truncate: bool = True):
    """The 1-D functions g_0 ... g_order on the integer grid -R..R (R = grid_half_width).

    g_0 is the Gaussian exp(-x^2 / (2 sigma^2)) divided by its sum over the taps kept;
    g_n = (-1/(sqrt 2 sigma))^n H_n(x/(sqrt 2 sigma)) g_0 sigma^n.  With `truncate`,
    taps with |x| > r(sigma) = ceil(2 sigma + 0.5) are zero (r without gradient).
    `sigma` may have any shape S; the result has shape (order + 1,) + S + (2R + 1,).
    """
    sigma = jnp.asarray(sigma)
    x = jnp.arange(-grid_half_width, grid_half_width + 1, dtype=sigma.dtype)
    s = sigma[..., None]
    g = jnp.exp(-(x * x) / (2.0 * s * s))
    if truncate:
        r = jax.lax.stop_gradient(half_width(s))
        g = jnp.where(jnp.abs(x) <= r, g, 0.0)
    g = g / jnp.sum(g, axis=-1, keepdims=True)
    u = x / (math.sqrt(2.0) * s)
    out = [g]
    for n in range(1, order + 1):
        out.append((-1.0 / math.sqrt(2.0)) ** n * _hermite(n, u) * g)
    return jnp.stack(out)


def njet_basis(sigma, grid_half_width: int, order: int = 2, truncate: bool = True):
    """The 2-D N-jet basis G^{l,k}(x, y) = g_l(x) g_k(y) on a (2R+1)x(2R+1) grid.

    Returns shape (num_basis(order),) + sigma.shape + (2R+1, 2R+1), indexed
    [basis, ..., y, x] (rows = y, columns = x), in the order of `basis_orders`.
    """
    g = gaussian_derivatives_1d(sigma, grid_half_width, order, truncate)
    return jnp.stack([g[k][..., :, None] * g[l][..., None, :] for l, k in basis_orders(order)])


def srf_filters(alpha, basis):
    """Filters F[out, in] = sum_b alpha[b, in, out] basis[b] (shared basis (B, K, K)) or
    basis[b, in, out] (per-filter basis (B, in, out, K, K)); shape (out, in, K, K)."""
    if basis.ndim == 3:
        return jnp.einsum("bio,byx->oiyx", alpha, basis)
    return jnp.einsum("bio,bioyx->oiyx", alpha, basis)


def _conv(x, w, stride: int, pad: int):
    """Cross-correlation of one example (C, H, W) with w (O, C, K, K), zero padding.

    `jaxode.nn.conv.conv2d` (the same function as ``lax.conv_general_dilated`` in
    NCHW / OIHW layout), whose derivatives stay in XLA:CPU's fast layout inside the
    solver loops: the DCN field's forward + VJP measured 251 ms with the NCHW
    convolution and 37 ms with conv2d (batch 16, 16 channels, 30x30; torch 35 ms)."""
    return conv2d(x, w, stride, pad)


def _toeplitz(g, n_in: int, stride: int):
    """Cross-correlation along one axis as a matrix: T[..., w, v] = g[..., w - stride v + R].

    `g` holds 1-D filters on the taps -R..R (last axis, length 2R + 1).  For an input
    row x of length n_in, (x @ T)[v] = sum_j x[stride v + j] g[j + R] is the "same",
    zero-padded correlation (taps that fall outside the row meet the zero padding and
    are dropped), sampled at the (n_in - 1) // stride + 1 output positions of
    ``_conv(..., stride, pad=R)``.  Taps with |j| >= n_in never meet the row, so g is
    zero-padded or cropped to the half-width n_in - 1 first.
    """
    r = (g.shape[-1] - 1) // 2
    need = n_in - 1
    if r < need:
        pad = [(0, 0)] * (g.ndim - 1) + [(need - r, need - r)]
        g, r = jnp.pad(g, pad), need
    n_out = (n_in - 1) // stride + 1
    d = np.arange(n_in)[:, None] - stride * np.arange(n_out)[None, :]
    return g[..., d + r]


def _separable_srf_conv(x, alpha, sigma, grid: int, order: int, stride: int):
    """The SRF convolution through the separability of the N-jet (supplement eq. A.5):
    with G^{l,k}(x, y) = g_l(x) g_k(y) and the 1-D correlations written as matrices
    (`_toeplitz`: T_x[l] along the width, T_y[k] along the height),

        y_o = sum_{b = (l, k)} T_y[k]^T ( sum_i alpha[b, i, o] x_i ) T_x[l],

    i.e. a 1x1 mixing of the input channels per basis function, then one 1-D pass
    along the width and one along the height per basis function, summed over b.

    The same numbers as the masked (2 grid + 1)^2 convolution (same truncation at r(sigma)
    and at the grid, same normalisation), but the shapes and the cost do not depend on
    the kernel size: |basis| (C_in C_out + C_out (W + H)) multiply-adds per pixel instead
    of (2r + 1)^2 C_in C_out.  `jit` never recompiles when sigma grows.
    """
    _, height, width = x.shape
    g = gaussian_derivatives_1d(sigma, grid, order)  # (order + 1, 2 grid + 1)
    ls, ks = (np.array(v) for v in zip(*basis_orders(order)))
    tx = _toeplitz(g, width, stride)[ls]  # (B, W, W'): g_l along the width
    ty = _toeplitz(g, height, stride)[ks]  # (B, H, H'): g_k along the height
    mixed = jnp.einsum("bio,ihw->bohw", alpha, x)
    along_x = jnp.einsum("bohw,bwv->bohv", mixed, tx)
    return jnp.einsum("bohv,bhu->ouv", along_x, ty)


def _srf_conv(x, alpha, sigma, grid: int, order: int, stride: int, support: str):
    """Convolve with the SRF filters of (alpha, sigma) on a grid of half-width `grid`.

    ``support="masked"``: one kernel of size 2 grid + 1 whose taps beyond r(sigma) are
    zero.  ``support="switch"``: `jax.lax.switch` over the static half-widths 1..grid
    picks the branch of size 2 r(sigma) + 1 at run time (only that branch runs when
    sigma is not batched), so the convolution has the reference's exact size; r is
    clipped to `grid`.  ``support="separable"``: the same filters applied as 1-D
    passes (`_separable_srf_conv`), at a cost independent of the kernel size.
    All three give the same numbers; they differ in cost.
    """
    if support == "separable":
        return _separable_srf_conv(x, alpha, sigma, grid, order, stride)
    if support == "masked":
        basis = njet_basis(sigma, grid, order)
        return _conv(x, srf_filters(alpha, basis), stride, grid)

    def branch(h, x, alpha, sigma):
        return _conv(x, srf_filters(alpha, njet_basis(sigma, h, order)), stride, h)

    r = jnp.clip(half_width(jax.lax.stop_gradient(jnp.max(sigma))), 1, grid).astype(jnp.int32)
    branches = [functools.partial(branch, h) for h in range(1, grid + 1)]
    return jax.lax.switch(r - 1, branches, x, alpha, sigma)


def _with_time(t, x):
    tt = jnp.broadcast_to(jnp.asarray(t, x.dtype), (1,) + x.shape[1:])
    return jnp.concatenate([tt, x], axis=0)


def _check_input(name, x, channels):
    if x.ndim != 3 or x.shape[0] != channels:
        raise ValueError(
            f"{name} expects one example of shape (C={channels}, H, W), got {x.shape}; "
            "vmap over a batch."
        )


# -------------------------------------------------------------------------- layers

# Grid used when a layer is built under `jit` (its sigma is not known then); callers
# building under `jit` (e.g. `jaxode.models.dcn.build_model`) call `refresh_support`.
_PLACEHOLDER_GRID = 4


def _traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)



class _SRFBase(eqx.Module):
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    order: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    time_channel: bool = eqx.field(static=True)
    grid_half_width: int = eqx.field(static=True)
    support: str = eqx.field(static=True)

    @property
    def _n_in(self) -> int:
        return self.in_channels + (1 if self.time_channel else 0)

    def _prepare(self, t, x):
        _check_input(type(self).__name__, x, self.in_channels)
        if self.time_channel:
            if t is None:
                raise ValueError(f"{type(self).__name__} with time_channel=True needs a time t.")
            x = _with_time(t, x)
        return x


class SRFConv2d(_SRFBase):
    """An SRF convolution with one learnable scale per layer, sigma = 2^scale.

    y = F_alpha(.; sigma) (*) x, cross-correlation, "same" zero padding, no bias.
    Parameters: alpha (B, in[+1], out) ~ N(0, 0.1^2) and scale ~ N(0, (2/3)^2)
    (supplement A.2); B = num_basis(order).  ``layer(x)`` or ``layer(t, x)`` with
    ``time_channel=True``.  The grid half-width starts at r(sigma_init) (see the module
    docstring on `refresh_support`).

    **Arguments:** `in_channels`, `out_channels`, `order` (2), `stride` (1),
    `time_channel` (False), `grid_half_width` (None: r of the initial sigma), `key`.
    """

    alpha: jax.Array
    scale: jax.Array

    def __init__(self, in_channels, out_channels, order=2, stride=1, time_channel=False,
                 grid_half_width=None, *, key):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.stride, self.time_channel = order, stride, time_channel
        self.support = "masked"
        k1, k2 = jax.random.split(key)
        n_in = in_channels + (1 if time_channel else 0)
        self.alpha = 0.1 * jax.random.normal(k1, (num_basis(order), n_in, out_channels))
        self.scale = (2.0 / 3.0) * jax.random.normal(k2, ())
        if grid_half_width is None:
            grid_half_width = (_PLACEHOLDER_GRID if _traced(self.scale)
                               else half_width_host(2.0 ** float(self.scale)))
        self.grid_half_width = int(grid_half_width)

    @property
    def sigma(self) -> jax.Array:
        return 2.0 ** self.scale

    def sigma_range(self) -> tuple[float, float]:
        s = float(2.0 ** float(self.scale))
        return s, s

    def filters(self, t=None) -> jax.Array:
        del t
        basis = njet_basis(self.sigma, self.grid_half_width, self.order)
        return srf_filters(self.alpha, basis)

    def __call__(self, *args):
        t, x = (None, args[0]) if len(args) == 1 else args
        x = self._prepare(t, x)
        return _srf_conv(x, self.alpha, self.sigma, self.grid_half_width, self.order,
                         self.stride, self.support)


class SRFConv2dPerFilter(_SRFBase):
    """An SRF convolution with one scale per (input, output) pair ("DCN sigma^ji",
    supplement A.2): fixed 7x7 support (grid_half_width 3), each filter's Gaussian
    normalised over the 7x7 grid with no further truncation.

    Parameters: alpha (B, in[+1], out) ~ N(0, 0.1^2), scale (in[+1], out) ~ N(0, (2/3)^2).
    """

    alpha: jax.Array
    scale: jax.Array

    def __init__(self, in_channels, out_channels, order=2, stride=1, time_channel=False,
                 grid_half_width=3, *, key):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.stride, self.time_channel = order, stride, time_channel
        self.support = "masked"
        self.grid_half_width = int(grid_half_width)
        k1, k2 = jax.random.split(key)
        n_in = in_channels + (1 if time_channel else 0)
        self.alpha = 0.1 * jax.random.normal(k1, (num_basis(order), n_in, out_channels))
        self.scale = (2.0 / 3.0) * jax.random.normal(k2, (n_in, out_channels))

    @property
    def sigma(self) -> jax.Array:
        return 2.0 ** self.scale

    def filters(self, t=None) -> jax.Array:
        del t
        basis = njet_basis(self.sigma, self.grid_half_width, self.order, truncate=False)
        return srf_filters(self.alpha, basis)

    def __call__(self, *args):
        t, x = (None, args[0]) if len(args) == 1 else args
        x = self._prepare(t, x)
        return _conv(x, self.filters(), self.stride, self.grid_half_width)


class MetaSRFConv2d(_SRFBase):
    """An SRF convolution whose scale (and optionally coefficients) are functions of
    the block time t (Tomen et al., Table 4; supplement A.2).

    With tau = clip(t, -0.5, 2.5) and t_s = 0.5 tau:

    - ``sigma="linear"``: sigma(t) = 2^(s t_s + b), s ~ N(0, (2/3)^2), b ~ N(0, 0.1^2);
    - ``sigma="quadratic"``: sigma(t) = 2^(s2 t_s^2 + s t_s + b), s2, s ~ N(0, (2/3)^2),
      b ~ N(0, 0.1^2);
    - ``alpha_of_t=True``: alpha(t) = alpha t_s + alpha_bias, alpha_bias ~ N(0, 0.05^2);
      otherwise alpha is constant.

    The support r(sigma(t)) changes with t inside one ODE solve, so the grid must
    cover the largest sigma over the clipped time range; `refresh_support` computes
    it (`sigma_range`).  Always takes ``layer(t, x)``.
    """

    alpha: jax.Array
    alpha_bias: jax.Array | None
    scale_coeffs: jax.Array  # (b, s) or (b, s, s2): log2 sigma = sum_p c_p t_s^p
    sigma_form: str = eqx.field(static=True)

    def __init__(self, in_channels, out_channels, sigma="linear", alpha_of_t=False, order=2,
                 stride=1, time_channel=True, grid_half_width=None, *, key):
        if sigma not in ("linear", "quadratic"):
            raise ValueError(f"MetaSRFConv2d: sigma must be 'linear' or 'quadratic', got {sigma!r}.")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.order, self.stride, self.time_channel = order, stride, time_channel
        self.support = "masked"
        self.sigma_form = sigma
        k1, k2, k3, k4 = jax.random.split(key, 4)
        n_in = in_channels + (1 if time_channel else 0)
        shape = (num_basis(order), n_in, out_channels)
        self.alpha = 0.1 * jax.random.normal(k1, shape)
        self.alpha_bias = 0.05 * jax.random.normal(k2, shape) if alpha_of_t else None
        b = 0.1 * jax.random.normal(k3, ())
        n_slopes = 1 if sigma == "linear" else 2
        slopes = (2.0 / 3.0) * jax.random.normal(k4, (n_slopes,))
        self.scale_coeffs = jnp.concatenate([b[None], slopes])
        if grid_half_width is None:
            grid_half_width = (_PLACEHOLDER_GRID if _traced(self.scale_coeffs)
                               else half_width_host(self.sigma_range()[1]))
        self.grid_half_width = int(grid_half_width)

    @staticmethod
    def time_scaled(t):
        return T_SCALE * jnp.clip(t, *T_CLIP)

    def sigma_at(self, t) -> jax.Array:
        ts = self.time_scaled(jnp.asarray(t, self.scale_coeffs.dtype))  # float64 layers stay float64
        powers = jnp.stack([ts ** p for p in range(self.scale_coeffs.shape[0])])
        return 2.0 ** jnp.dot(self.scale_coeffs, powers)

    def alpha_at(self, t) -> jax.Array:
        if self.alpha_bias is None:
            return self.alpha
        return self.alpha * self.time_scaled(jnp.asarray(t, self.alpha.dtype)) + self.alpha_bias

    def sigma_range(self) -> tuple[float, float]:
        """(min, max) of sigma(t) over the clipped time range (host floats)."""
        c = np.asarray(self.scale_coeffs, np.float64)
        cands = [T_SCALE * T_CLIP[0], T_SCALE * T_CLIP[1]]
        if c.shape[0] == 3 and c[2] != 0:
            v = -c[1] / (2 * c[2])
            if cands[0] <= v <= cands[1]:
                cands.append(v)
        logs = [sum(c[p] * u ** p for p in range(c.shape[0])) for u in cands]
        return float(2.0 ** min(logs)), float(2.0 ** max(logs))

    def filters(self, t) -> jax.Array:
        basis = njet_basis(self.sigma_at(t), self.grid_half_width, self.order)
        return srf_filters(self.alpha_at(t), basis)

    def __call__(self, t, x):
        x = self._prepare(t, x)
        return _srf_conv(x, self.alpha_at(t), self.sigma_at(t), self.grid_half_width,
                         self.order, self.stride, self.support)


# ------------------------------------------------------- grid sizes over a model


def _is_srf(x) -> bool:
    return isinstance(x, (SRFConv2d, MetaSRFConv2d))


def srf_layers(model) -> list:
    """The SRF layers with a sigma-dependent support (shared-scale and meta layers) in
    `model`, in PyTree order."""
    return [x for x in jtu.tree_leaves(model, is_leaf=_is_srf) if _is_srf(x)]


def refresh_support(model, mode: str = "exact", max_half_width: int | None = None,
                    margin: int = 0):
    """Return `model` with each SRF layer's static kernel grid set (call outside `jit`,
    e.g. after an optimiser step).

    - ``mode="exact"``: grid = r(largest sigma of the layer) + `margin`, masked taps:
      with ``margin=0`` kernels are exactly the reference's size and a jitted step
      recompiles whenever a size changes; a margin m leaves room for sigma to grow by
      m / 2 before the filter is truncated (`support_overflow`) at a cost of a few
      zero taps.
    - ``mode="max"``: grid = `max_half_width` for every layer, masked taps beyond
      r(sigma): fixed shapes, never recompiles, pays for the zero taps.
    - ``mode="switch"``: grid = `max_half_width`, and `jax.lax.switch` runs the
      exact-size kernel chosen at run time from sigma: fixed shapes, exact-size
      convolutions, a larger compiled program (one branch per size).
    - ``mode="separable"``: grid = `max_half_width` (default
      `SEPARABLE_MAX_HALF_WIDTH`), filters applied as 1-D passes: fixed
      shapes, never recompiles, a cost that does not grow with sigma; the grid only
      bounds the truncation (sigma < (grid - 0.5) / 2 is exact).

    The per-filter sigma^ji layers keep their fixed 7x7 support.
    """
    if mode not in ("exact", "max", "switch", "separable"):
        raise ValueError(
            "refresh_support: mode must be 'exact', 'max', 'switch' or 'separable', "
            f"got {mode!r}."
        )
    if mode == "separable" and max_half_width is None:
        max_half_width = SEPARABLE_MAX_HALF_WIDTH
    if mode != "exact" and (not isinstance(max_half_width, int) or max_half_width < 1):
        raise ValueError(
            f"refresh_support: mode={mode!r} needs a positive int max_half_width, "
            f"got {max_half_width!r}."
        )
    support = mode if mode in ("switch", "separable") else "masked"

    def fix(layer):
        if not _is_srf(layer):
            return layer
        if mode == "exact":
            h = half_width_host(layer.sigma_range()[1]) + int(margin)
        else:
            h = max_half_width
        if h == layer.grid_half_width and support == layer.support:
            return layer
        new = copy.copy(layer)
        # static fields are not PyTree leaves, so eqx.tree_at cannot set them
        object.__setattr__(new, "grid_half_width", int(h))
        object.__setattr__(new, "support", support)
        return new

    return jtu.tree_map(fix, model, is_leaf=_is_srf)


def support_overflow(model) -> list[tuple[int, int, int]]:
    """(layer index, needed half-width, grid half-width) for every SRF layer whose
    r(sigma) exceeds its grid (its filters are then truncated at the grid)."""
    out = []
    for i, layer in enumerate(srf_layers(model)):
        need = half_width_host(layer.sigma_range()[1])
        if need > layer.grid_half_width:
            out.append((i, need, layer.grid_half_width))
    return out
