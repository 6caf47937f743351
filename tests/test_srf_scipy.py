"""SRF layer outputs against scipy's Gaussian derivative filters, in float64 (Issue 25).

An independent computation of what an SRF layer must output (REFERENCE_FACTS, "SRF
layer"; Tomen et al. supplement A.1): the 1-D Gaussian is sampled on the integer
grid |x| <= r, r = ceil(2 sigma + 0.5), divided by its sum over those taps; the
order-n basis function is sigma^n times the n-th derivative of that sampled,
normalised Gaussian; 2-D functions are outer products; a layer cross-correlates its
input ("same" zero padding) with sum_b alpha[b, in, out] G_b.

`scipy.ndimage.gaussian_filter(x, sigma, order=n, radius=r, mode="constant")` builds
exactly that kernel (exp(-x^2 / 2 sigma^2) on |x| <= r, divided by its sum, times the
derivative polynomial) and *convolves* with it.  Cross-correlating with an n-th
derivative (odd or even as n) is (-1)^n times convolving, so the layer's response to
basis function (l, k) (l derivatives along the width, k along the height) is

    (-sigma)^(l + k) * gaussian_filter(x, sigma, order=(k, l), radius=r, mode="constant").

None of jaxode's code builds the reference.  The basis order of alpha's first axis is
jaxode's documented one (`jaxode.nn.srf`): 1, d/dW, d/dH, d2/dW2, d2/dWdH, d2/dH2
(the released code stores the same six functions in another order, see
docs/models.md).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter, refresh_support

#: (derivatives along W, derivatives along H) of each basis function, in alpha's order.
JET2 = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
SIGMAS = (0.5, 0.8, 1.3, 2.0, 3.2, 5.0, 8.0)


def radius(sigma: float) -> int:
    return math.ceil(2.0 * sigma + 0.5)


def scipy_jet(image, sigma, l, k, r):
    """sigma^(l+k) d^l/dW^l d^k/dH^k of the truncated, normalised Gaussian,
    cross-correlated with `image` (zero padding), by scipy."""
    out = ndimage.gaussian_filter(image, sigma, order=(k, l), radius=r, mode="constant", cval=0.0)
    return (-sigma) ** (l + k) * out


def scipy_srf(x, alpha, sigmas, r, stride=1):
    """y[o] = sum_{b, i} alpha[b, i, o] (G_b(sigma[i, o]) * x[i]), subsampled by `stride`.
    `sigmas` has shape (in, out) (one sigma for all filters: a constant array)."""
    _, n_in, n_out = alpha.shape
    y = np.zeros((n_out,) + x.shape[1:])
    for o in range(n_out):
        for i in range(n_in):
            for b, (l, k) in enumerate(JET2):
                y[o] += alpha[b, i, o] * scipy_jet(x[i], sigmas[i, o], l, k, r)
    return y[:, ::stride, ::stride]


def with_params(layer, **values):
    """The layer with its named arrays replaced by float64 arrays."""
    names = tuple(values)
    return eqx.tree_at(lambda m: tuple(getattr(m, n) for n in names), layer,
                       tuple(jnp.asarray(values[n], jnp.float64) for n in names))


def impulse(h, w):
    x = np.zeros((h, w))
    x[h // 2, w // 3] = 1.0  # off-centre: a flipped axis or a shifted kernel shows
    return x


@pytest.mark.parametrize("support", ["separable", "exact"])
def test_each_basis_function_on_an_impulse_and_a_random_image(x64, support):
    """One layer, one input channel, six outputs: output b is basis function b alone.
    sigma from 0.5 (5x5 support) to 8 (35x35, wider than the 23x19 random image)."""
    rng = np.random.default_rng(0)
    images = [impulse(41, 39), rng.standard_normal((23, 19))]
    alpha = np.zeros((6, 1, 6))
    alpha[np.arange(6), 0, np.arange(6)] = 1.0
    # the exact-size support recompiles for every kernel size: three scales suffice there
    for sigma in SIGMAS if support == "separable" else (0.5, 2.0, 8.0):
        r = radius(sigma)
        layer = with_params(SRFConv2d(1, 6, key=jax.random.PRNGKey(0)), alpha=alpha,
                            scale=math.log2(sigma))
        layer = eqx.filter_jit(refresh_support(layer, support))
        for x in images:
            got = np.asarray(layer(jnp.asarray(x[None])))
            assert got.dtype == np.float64
            for b, (l, k) in enumerate(JET2):
                want = scipy_jet(x, sigma, l, k, r)
                assert np.abs(want).max() > 1e-4  # a response worth comparing
                np.testing.assert_allclose(got[b], want, rtol=1e-10, atol=1e-13,
                                           err_msg=f"sigma {sigma}, basis (l, k) = {(l, k)}")


@pytest.mark.parametrize("stride", [1, 2])
def test_layer_with_time_channel_and_random_coefficients(x64, stride):
    """The DCN field's layer: [t; x] (t a constant first channel), random alpha,
    stride 1 (ODE function) and 2 (DCN-full's down-sampling)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 17, 14))
    t = 0.7
    for sigma in (0.5, 2.0, 8.0):
        alpha = 0.1 * rng.standard_normal((6, 4, 5))
        layer = with_params(SRFConv2d(3, 5, stride=stride, time_channel=True,
                                      key=jax.random.PRNGKey(1)),
                            alpha=alpha, scale=math.log2(sigma))
        got = np.asarray(eqx.filter_jit(refresh_support(layer, "separable"))(t, jnp.asarray(x)))
        xt = np.concatenate([np.full((1,) + x.shape[1:], t), x])
        want = scipy_srf(xt, alpha, np.full((4, 5), sigma), radius(sigma), stride)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"sigma {sigma}")


def test_sigma_ji_layer(x64):
    """One sigma per (in, out) filter on the fixed 7x7 support, each Gaussian
    normalised over its 7 taps (REFERENCE_FACTS, sigma^ji variant): scipy radius 3."""
    rng = np.random.default_rng(2)
    sigmas = np.array([[0.5, 1.3, 8.0], [2.0, 0.8, 3.2]])
    alpha = 0.1 * rng.standard_normal((6, 2, 3))
    layer = with_params(SRFConv2dPerFilter(2, 3, key=jax.random.PRNGKey(2)),
                        alpha=alpha, scale=np.log2(sigmas))
    x = rng.standard_normal((2, 12, 15))
    got = np.asarray(eqx.filter_jit(layer)(jnp.asarray(x)))
    np.testing.assert_allclose(got, scipy_srf(x, alpha, sigmas, 3), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [-1.0, 0.4, 1.7, 3.0])
def test_meta_layer_at_a_block_time(x64, t):
    """sigma(t) = 2^(s2 t_s^2 + s t_s + b), alpha(t) = alpha t_s + alpha_bias, with
    t_s = 0.5 clip(t, -0.5, 2.5) (REFERENCE_FACTS, meta-parametrised), computed here
    from the layer's coefficients, then the scipy SRF at that sigma and alpha."""
    rng = np.random.default_rng(3)
    b, s, s2 = 0.3, 0.9, -0.6
    alpha, alpha_bias = 0.1 * rng.standard_normal((2, 6, 3, 2))
    layer = with_params(MetaSRFConv2d(2, 2, "quadratic", alpha_of_t=True,
                                      key=jax.random.PRNGKey(3)),
                        alpha=alpha, alpha_bias=alpha_bias, scale_coeffs=[b, s, s2])
    x = rng.standard_normal((2, 13, 11))
    ts = 0.5 * min(max(t, -0.5), 2.5)
    sigma = 2.0 ** (s2 * ts * ts + s * ts + b)
    layer = refresh_support(layer, "separable")
    got = np.asarray(eqx.filter_jit(layer)(jnp.float64(t), jnp.asarray(x)))
    xt = np.concatenate([np.full((1,) + x.shape[1:], t), x])
    want = scipy_srf(xt, alpha * ts + alpha_bias, np.full((3, 2), sigma), radius(sigma))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
