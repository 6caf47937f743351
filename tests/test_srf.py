"""N-jet basis and SRF convolutions (jaxode.nn.srf) against independent truths:
autodiff of the analytic Gaussian, the analytic rotated derivative (steerability),
scipy's correlation (separability, padding, stride), finite differences in sigma."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, signal

from jaxode.nn.srf import (
    MetaSRFConv2d,
    SRFConv2d,
    SRFConv2dPerFilter,
    basis_orders,
    gaussian_derivatives_1d,
    half_width,
    njet_basis,
    refresh_support,
    support_overflow,
)


def gauss2d(x, y, sigma):
    return jnp.exp(-(x * x + y * y) / (2.0 * sigma * sigma))


def analytic_derivative(l, k, sigma, R):
    """sigma^(l+k) d^l/dx^l d^k/dy^k exp(-(x^2+y^2)/(2 sigma^2)) on the grid, by autodiff."""
    f = lambda x, y: gauss2d(x, y, sigma)  # noqa: E731
    for _ in range(l):
        f = jax.grad(f, argnums=0)
    for _ in range(k):
        f = jax.grad(f, argnums=1)
    xs = jnp.arange(-R, R + 1, dtype=jnp.float32)
    vals = jax.jit(jax.vmap(lambda y: jax.vmap(lambda x: f(x, y))(xs)))(xs)  # rows y, cols x
    return np.asarray(vals) * sigma ** (l + k)


def norm_constant(sigma, r):
    """1 / sum of the 1-D Gaussian over the taps |x| <= r (numpy)."""
    x = np.arange(-r, r + 1)
    return 1.0 / np.sum(np.exp(-(x ** 2) / (2 * sigma ** 2)))


@pytest.mark.parametrize("order,sigma", [(2, 0.7), (2, 2.2), (4, 1.3)])
def test_basis_matches_analytic_gaussian_derivatives(order, sigma):
    r = math.ceil(2 * sigma + 0.5)
    R = r + 2  # a larger grid: taps beyond r must be exactly zero
    basis = np.asarray(njet_basis(jnp.float32(sigma), R, order))
    c = norm_constant(sigma, r)
    xs = np.arange(-R, R + 1)
    inside = (np.abs(xs)[:, None] <= r) & (np.abs(xs)[None, :] <= r)
    assert basis.shape == ((order + 1) * (order + 2) // 2, 2 * R + 1, 2 * R + 1)
    for b, (l, k) in enumerate(basis_orders(order)):
        truth = c * c * analytic_derivative(l, k, sigma, R) * inside
        np.testing.assert_allclose(basis[b], truth, atol=2e-6, rtol=1e-4)


def test_basis_order_and_normalisation():
    assert basis_orders(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    b = np.asarray(njet_basis(jnp.float32(1.1), 5))
    assert b[0].sum() == pytest.approx(1.0, abs=1e-6)  # normalised 2-D Gaussian
    # G^{1,0} is odd in x (columns) and even in y (rows): x runs along the width
    np.testing.assert_allclose(b[1], -b[1][:, ::-1], atol=1e-7)
    np.testing.assert_allclose(b[1], b[1][::-1, :], atol=1e-7)
    assert b[1][5, 6] < 0  # -(x/sigma) g at x = +1
    np.testing.assert_allclose(b[2], b[1].T, atol=1e-7)
    with pytest.raises(ValueError, match="order"):
        basis_orders(-1)


def test_half_width_table():
    # reference code: 3x3 at 0.25, 5x5 at 0.5, 7x7 at 1, 9x9 at 1.5, 11x11 at 2
    for sigma, size in [(0.25, 3), (0.5, 5), (1.0, 7), (1.5, 9), (2.0, 11)]:
        assert 2 * int(half_width(jnp.float32(sigma))) + 1 == size


@pytest.mark.parametrize("theta", [0.3, 1.1, 2.5])
def test_steerability_second_order(theta):
    """cos^2 G_xx + 2 cos sin G_xy + sin^2 G_yy is the second derivative along the
    direction (cos, sin): compare with the analytic directional derivative."""
    sigma, R = 1.4, 9  # a wide grid, no truncation, so all functions share one constant
    b = np.asarray(njet_basis(jnp.float32(sigma), R, 2, truncate=False))
    c, s = math.cos(theta), math.sin(theta)
    steered = c * c * b[3] + 2 * c * s * b[4] + s * s * b[5]

    def along(x, y):
        return jax.grad(jax.grad(lambda u: gauss2d(x + u * c, y + u * s, sigma)))(0.0)

    xs = jnp.arange(-R, R + 1, dtype=jnp.float32)
    truth = np.asarray(jax.jit(jax.vmap(lambda y: jax.vmap(lambda x: along(x, y))(xs)))(xs))
    truth = truth * sigma ** 2 * norm_constant(sigma, R) ** 2
    np.testing.assert_allclose(steered, truth, atol=2e-6, rtol=1e-4)
    # and it is not the unrotated filter
    assert np.abs(steered - b[3]).max() > 1e-2


def test_separable_filter_equals_two_1d_convolutions(key):
    """An SRF layer with a one-hot alpha on G^{1,1} == 1-D correlation along x with g_1,
    then along y with g_1 (scipy), with 'same' zero padding."""
    sigma = 0.9
    layer = SRFConv2d(1, 1, key=key)
    alpha = jnp.zeros_like(layer.alpha).at[4, 0, 0].set(1.0)  # (l, k) = (1, 1)
    layer = eqx.tree_at(lambda m: (m.alpha, m.scale), layer,
                        (alpha, jnp.float32(math.log2(sigma))))
    layer = refresh_support(layer, "exact")
    x = np.asarray(jax.random.normal(key, (1, 13, 11)), np.float64)
    r = math.ceil(2 * sigma + 0.5)
    t = np.arange(-r, r + 1)
    g = np.exp(-t ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    g1 = -(t / sigma) * g  # analytic first-order 1-D basis function
    two_pass = ndimage.correlate1d(x[0], g1, axis=1, mode="constant")
    two_pass = ndimage.correlate1d(two_pass, g1, axis=0, mode="constant")
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x, jnp.float32)))[0], two_pass,
                               atol=1e-5)
    # the 1-D functions of the library are these same g_0, g_1
    g_lib = np.asarray(gaussian_derivatives_1d(jnp.float32(sigma), r, 1))
    np.testing.assert_allclose(g_lib[1], g1, atol=1e-6)


def assert_scipy_correlation(layer, t, x, stride):
    """layer(t, x) == the 'same' zero-padded 2-D correlation (scipy) of [t; x] with the
    layer's filters, subsampled by the stride."""
    y = np.asarray(eqx.filter_jit(layer)(t, x))
    w = np.asarray(eqx.filter_jit(layer.filters)())  # (out, in + 1, K, K)
    c, h, wd = x.shape
    xt = np.concatenate([np.full((1, h, wd), t), np.asarray(x)])
    assert y.shape == (w.shape[0], -(-h // stride), -(-wd // stride))
    for o in range(w.shape[0]):
        full = sum(signal.correlate2d(xt[i], w[o, i], mode="same") for i in range(c + 1))
        np.testing.assert_allclose(y[o], full[::stride, ::stride], atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "separable"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_is_cross_correlation_with_same_padding(key, stride, mode):
    layer = SRFConv2d(3, 2, stride=stride, time_channel=True, key=key)
    layer = refresh_support(layer, mode)
    assert_scipy_correlation(layer, 0.7, jax.random.normal(jax.random.PRNGKey(1), (3, 10, 9)),
                             stride)


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_support_with_a_kernel_wider_than_the_image(key, stride):
    """sigma = 3 (r = 7, a 15 x 15 kernel) on a 6 x 5 image: the basis-first 1-D passes
    still equal the full 2-D correlation, whose taps beyond the image meet only padding."""
    layer = SRFConv2d(2, 3, stride=stride, time_channel=True, key=key)
    layer = eqx.tree_at(lambda m: m.scale, layer, jnp.float32(math.log2(3.0)))
    layer = refresh_support(layer, "separable")
    assert layer.grid_half_width >= 7 and support_overflow(layer) == []
    assert_scipy_correlation(layer, -0.3, jax.random.normal(jax.random.PRNGKey(5), (2, 6, 5)),
                             stride)


def _fd_check(f, theta, eps=1e-2, rtol=2e-2):
    f = jax.jit(f)
    g = float(jax.jit(jax.grad(f))(theta))
    fd = (float(f(theta + eps)) - float(f(theta - eps))) / (2 * eps)
    assert g == pytest.approx(fd, rel=rtol, abs=1e-4)
    assert abs(g) > 1e-3  # a real dependence, not a vacuous zero


def test_gradient_wrt_scale_matches_finite_differences(key):
    layer = SRFConv2d(2, 3, key=key)
    layer = eqx.tree_at(lambda m: m.scale, layer, jnp.float32(0.1))  # sigma 1.07, r = 3
    layer = refresh_support(layer, "exact")
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 9, 9))
    probe = jax.random.normal(jax.random.PRNGKey(3), (3, 9, 9))

    def f(scale):
        return jnp.sum(probe * eqx.tree_at(lambda m: m.scale, layer, scale)(x))

    _fd_check(f, jnp.float32(0.1))


def test_gradient_per_filter_and_meta_scales(key):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8))
    pf = SRFConv2dPerFilter(2, 2, key=key)
    probe = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8))

    def f_pf(v):
        return jnp.sum(probe * eqx.tree_at(lambda m: m.scale, pf, pf.scale.at[1, 0].set(v))(x))

    _fd_check(f_pf, pf.scale[1, 0])

    meta = MetaSRFConv2d(2, 2, "quadratic", alpha_of_t=True, time_channel=False, key=key)
    meta = refresh_support(meta, "max", max_half_width=8)

    def f_meta(v):
        m = eqx.tree_at(lambda m: m.scale_coeffs, meta, meta.scale_coeffs.at[2].set(v))
        return jnp.sum(probe * m(1.3, x))

    _fd_check(f_meta, meta.scale_coeffs[2])


def test_grid_modes_give_identical_outputs_and_gradients(key):
    """masked at the exact size, masked on a larger grid, the lax.switch dispatch and the
    basis-first separable passes compute the same function (zero taps beyond r(sigma)
    change nothing)."""
    layer = SRFConv2d(3, 4, time_channel=True, key=key)
    assert layer.grid_half_width < 4
    x = jax.random.normal(jax.random.PRNGKey(4), (3, 12, 12))
    outs = []
    for mode in ("exact", "max", "switch", "separable"):
        m = refresh_support(layer, mode, max_half_width={"exact": None, "separable": 9}.get(mode, 4))
        v, g = eqx.filter_jit(eqx.filter_value_and_grad(lambda m: jnp.sum(jnp.sin(m(0.4, x)))))(m)
        outs.append((float(v), float(g.scale), np.asarray(g.alpha)))
    for v, gs, ga in outs[1:]:
        assert v == pytest.approx(outs[0][0], rel=1e-5, abs=1e-5)
        assert gs == pytest.approx(outs[0][1], rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(ga, outs[0][2], rtol=1e-4, atol=1e-5)


def test_renormalised_wider_gaussian_differs_from_truncation(key):
    """Sampling on a larger grid *without* the r(sigma) mask is a different filter
    (the reason the mask exists)."""
    wide = np.asarray(njet_basis(jnp.float32(2.0), 8, truncate=False))[0]
    trunc = np.asarray(njet_basis(jnp.float32(2.0), 8, truncate=True))[0]  # r = 5
    assert np.abs(wide - trunc).max() > 1e-4


def test_support_overflow_and_refresh(key):
    layer = SRFConv2d(1, 1, key=key, grid_half_width=1)
    layer = eqx.tree_at(lambda m: m.scale, layer, jnp.float32(1.0))  # sigma 2 -> r = 5
    assert support_overflow(layer) == [(0, 5, 1)]
    fixed = refresh_support(layer, "exact")
    assert fixed.grid_half_width == 5 and support_overflow(fixed) == []
    with pytest.raises(ValueError, match="max_half_width"):
        refresh_support(layer, "max")
    with pytest.raises(ValueError, match="shape"):
        layer(jnp.ones((2, 4, 4)))


def test_meta_parametrisation_formulas(key):
    lin = MetaSRFConv2d(2, 2, "linear", alpha_of_t=True, key=key)
    quad = MetaSRFConv2d(2, 2, "quadratic", key=key)
    for t in (-3.0, -0.5, 0.0, 0.8, 2.0, 2.5, 7.0):
        ts = 0.5 * min(max(t, -0.5), 2.5)
        b, s = (float(v) for v in lin.scale_coeffs)
        assert float(lin.sigma_at(t)) == pytest.approx(2 ** (s * ts + b), rel=1e-5)
        b, s, s2 = (float(v) for v in quad.scale_coeffs)
        assert float(quad.sigma_at(t)) == pytest.approx(2 ** (s2 * ts * ts + s * ts + b), rel=1e-5)
        np.testing.assert_allclose(np.asarray(lin.alpha_at(t)),
                                   np.asarray(lin.alpha) * ts + np.asarray(lin.alpha_bias),
                                   rtol=1e-5, atol=1e-7)
    # sigma_range brackets sigma(t) over a dense sweep of the clipped time range
    ts = np.linspace(-1.0, 3.0, 401)
    sig = np.array([float(quad.sigma_at(t)) for t in ts])
    lo, hi = quad.sigma_range()
    assert lo == pytest.approx(sig.min(), rel=1e-3) and hi == pytest.approx(sig.max(), rel=1e-3)
    assert lin.alpha_bias is not None and quad.alpha_bias is None


def test_meta_layer_separable_under_vmap_over_times(key):
    """A batch of examples at different block times (per-sample sigma(t), alpha(t)):
    the separable passes equal the masked 17 x 17 convolution, values and gradients."""
    meta = MetaSRFConv2d(2, 3, "quadratic", alpha_of_t=True, key=key)
    ts = jnp.array([0.0, 0.9, 2.0])
    xs = jax.random.normal(jax.random.PRNGKey(6), (3, 2, 8, 7))

    def loss(m):
        return jnp.sum(jnp.sin(jax.vmap(m)(ts, xs)))

    res = [eqx.filter_jit(eqx.filter_value_and_grad(loss))(refresh_support(meta, mode,
                                                                            max_half_width=8))
           for mode in ("max", "separable")]
    (v0, g0), (v1, g1) = res
    assert float(v1) == pytest.approx(float(v0), rel=1e-5)
    np.testing.assert_allclose(np.asarray(g1.scale_coeffs), np.asarray(g0.scale_coeffs),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(g1.alpha), np.asarray(g0.alpha), rtol=1e-4, atol=1e-5)
