"""jaxode.nn.conv.conv2d: same values and gradients as lax.conv_general_dilated
(autodiff), checked by finite differences too; fast inside while loops because
its derivative convolutions are in XLA:CPU's canonical layout."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxode.nn import conv as conv_module
from jaxode.nn.conv import CONV_PATHS, conv2d, conv2d_hwc, conv_path, force_conv_path, reference_conv2d
from jaxode.nn.layers import ConcatConv2d

# (kernel, stride, padding) of the convolutions used in the project.
CASES = [(3, 1, 1), (4, 2, 1), (3, 1, 0), (1, 2, 0)]


def _data(k, key, c=2, o=3, h=6, batch=2):
    kx, kw, kg = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, c, h, h), jnp.float32)
    w = jax.random.normal(kw, (o, c, k, k), jnp.float32) / (c * k * k) ** 0.5
    return x, w, kg


@pytest.mark.parametrize("k,s,p", CASES)
def test_values_and_gradients_match_lax_autodiff_and_finite_differences(k, s, p, key):
    """In float64: forward, input and weight gradients (reverse mode) and the JVP
    equal those of lax.conv_general_dilated (NCHW / OIHW) under JAX autodiff, and
    both gradients match central finite differences along random directions."""
    with jax.enable_x64(True):
        x, w, kg = _data(k, key)
        x, w = x.astype(jnp.float64), w.astype(jnp.float64)
        out_shape = jax.eval_shape(lambda: jax.vmap(lambda xi: conv2d(xi, w, s, p))(x)).shape
        g = jax.random.normal(kg, out_shape, jnp.float64)
        dx = jax.random.normal(jax.random.fold_in(kg, 1), x.shape, jnp.float64)
        dw = jax.random.normal(jax.random.fold_in(kg, 2), w.shape, jnp.float64)

        def loss(fn):
            return lambda x_, w_: jnp.sum(g * jnp.tanh(jax.vmap(lambda xi: fn(xi, w_, s, p))(x_)))

        @jax.jit
        def run(x, w):
            res = {}
            for name, fn in (("fast", conv2d), ("ref", reference_conv2d)):
                res[name] = (
                    jax.vmap(lambda xi: fn(xi, w, s, p))(x),
                    jax.grad(loss(fn), (0, 1))(x, w),
                    jax.jvp(loss(fn), (x, w), (dx, dw))[1],  # forward mode: the rule's tangents
                )
            eps = 1e-6
            f = loss(conv2d)
            res["fd"] = (
                (f(x + eps * dx, w) - f(x - eps * dx, w)) / (2 * eps),
                (f(x, w + eps * dw) - f(x, w - eps * dw)) / (2 * eps),
            )
            return res

        res = run(x, w)
    (out, (gx, gw), t1), (ref, (rx, rw), t2) = res["fast"], res["ref"]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gx, rx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw, rw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t1, t2, rtol=1e-10)
    fd_x, fd_w = res["fd"]
    np.testing.assert_allclose(np.vdot(gx, dx), fd_x, rtol=1e-6)
    np.testing.assert_allclose(np.vdot(gw, dw), fd_w, rtol=1e-6)


def test_second_order_matches_reference(key):
    """Hessian-vector products (needed by e.g. gradient penalties) are exact too."""
    x, w, _ = _data(3, key, batch=1)

    def loss(fn):
        return lambda w_: jnp.sum(jnp.tanh(fn(x[0], w_, 1, 1)) ** 2)

    v = jnp.ones_like(w)
    hv1, hv2 = jax.jit(lambda w: [jax.jvp(jax.grad(loss(fn)), (w,), (v,))[1]
                                  for fn in (conv2d, reference_conv2d)])(w)
    np.testing.assert_allclose(hv1, hv2, rtol=1e-4, atol=1e-5)


def test_derivative_convolutions_are_canonical_inside_a_loop(key):
    """Inside lax.scan every convolution of value + gradient (forward, input grad,
    weight grad contracted over the batch) is in XLA:CPU's canonical NHWC / HWIO
    layout, the one lowered to the fast kernel; Equinox's layout is not."""
    x, w, _ = _data(3, key, c=5, o=6, h=7, batch=4)

    def body_for(fn):
        def f(x, w):
            def body(acc, i):
                def loss(x_, w_):
                    return jnp.sum(jax.vmap(lambda xi: fn(xi, w_, 1, 1))(x_ * i) ** 2)

                val, (gx, gw) = jax.value_and_grad(loss, (0, 1))(x, w)
                return (acc[0] + gx, acc[1] + gw, acc[2] + val), None

            init = (jnp.zeros_like(x), jnp.zeros_like(w), jnp.zeros(()))
            return lax.scan(body, init, jnp.arange(1.0, 3.0))[0]

        return jax.jit(f).lower(x, w).compile().as_text()

    def labels(hlo):
        return re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)

    fast = labels(body_for(conv2d))
    assert len(fast) == 3 and set(fast) == {"b01f_01io->b01f"}, fast
    slow = labels(body_for(reference_conv2d))
    assert any(lab != "b01f_01io->b01f" for lab in slow), slow


def test_reverse_over_forward_is_exact_and_canonical_inside_a_loop(key):
    """The gradient of ||d net / dx . eps||^2 (a JVP differentiated in reverse mode: the
    Jacobian regulariser's training step, `jaxode.ode._regularize`) of a two-layer
    conv net inside lax.scan equals the reference's, and every convolution keeps the
    batch-first, channels-last input and output of the fast kernel (before the rule
    was closed under differentiation, the weight-gradient terms came out as
    ``f01b_i01o->01fb``)."""
    x, w, _ = _data(3, key, c=5, o=5, h=7, batch=4)
    eps = jax.random.normal(jax.random.fold_in(key, 9), x.shape)

    def run(fn):
        def net(z, w_):
            return jax.vmap(lambda zi: fn(jnp.tanh(fn(zi, w_, 1, 1)), w_, 1, 1))(z)

        def jac_sq(x_, w_):
            return jnp.sum(jax.jvp(lambda z: net(z, w_), (x_,), (eps,))[1] ** 2)

        def f(x, w):
            def body(acc, i):
                gx, gw = jax.grad(jac_sq, (0, 1))(x * i, w)
                return (acc[0] + gx, acc[1] + gw), None

            return lax.scan(body, (jnp.zeros_like(x), jnp.zeros_like(w)), jnp.arange(1.0, 3.0))[0]

        jitted = jax.jit(f)
        return jitted(x, w), jitted.lower(x, w).compile().as_text()

    (gx, gw), hlo = run(conv2d)
    (rx, rw), _ = run(reference_conv2d)
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(rx))))
    np.testing.assert_allclose(gw, rw, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(rw))))
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert len(labels) >= 6, labels
    assert all(lab.startswith("b01f_01") and lab.endswith("->b01f") for lab in labels), labels


def test_bad_shapes_raise():
    x, w = jnp.zeros((2, 2, 6, 6)), jnp.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="one example"):
        conv2d(x, w)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d(x[0], w[:, :1])
    with pytest.raises(ValueError, match="padding"):
        conv2d(x[0], w, 1, "SAME")


def test_concat_conv2d_fast_equals_equinox(key):
    """ConcatConv2d's default (fast) path equals Equinox's Conv2d on [t; x], values
    and parameter gradients, and keeps the `conv` attribute layout; so does
    `channels_last` on the transposed input, with either path."""
    layer = ConcatConv2d(3, 4, 4, 2, 1, key=key)
    slow = eqx.tree_at(lambda m: m.conv, ConcatConv2d(3, 4, 4, 2, 1, key=key, fast=False), layer.conv)
    assert layer.conv.weight.shape == (4, 4, 4, 4) and layer.conv.bias.shape == (4, 1, 1)
    x = jax.random.normal(key, (2, 3, 8, 8))
    t = jnp.asarray(0.7, jnp.float32)

    def loss(m):
        return jnp.sum(jnp.sin(jax.vmap(m, in_axes=(None, 0))(t, x)))

    (l1, g1), (l2, g2) = eqx.filter_jit(lambda a, b: (
        eqx.filter_value_and_grad(loss)(a), eqx.filter_value_and_grad(loss)(b)))(layer, slow)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(g1.conv.weight, g2.conv.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1.conv.bias, g2.conv.bias, rtol=1e-5, atol=1e-6)
    # channels_last: the same layer on (H, W, C), fast and Equinox (fast=False) paths
    x_hwc = jnp.transpose(x, (0, 2, 3, 1))

    def loss_hwc(m):
        return jnp.sum(jnp.sin(jax.vmap(m.channels_last, in_axes=(None, 0))(t, x_hwc)))

    for m in (layer, slow):
        l3, g3 = eqx.filter_jit(eqx.filter_value_and_grad(loss_hwc))(m)
        np.testing.assert_allclose(l3, l2, rtol=1e-5)
        np.testing.assert_allclose(g3.conv.weight, g2.conv.weight, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g3.conv.bias, g2.conv.bias, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- backend selection (issue 21)


def _has_custom_jvp(x, w) -> bool:
    """Trace a fresh function (JAX caches traces per function) of conv2d's forward."""
    fwd = jax.vmap(lambda xi: conv2d(xi, w, 1, 1))
    return "custom_jvp_call" in str(jax.make_jaxpr(fwd)(x))


def test_path_is_selected_by_backend_at_trace_time(key, monkeypatch):
    """The custom-JVP convolution is an XLA:CPU workaround: conv2d traces it on the CPU
    backend only.  With another backend standing in (the CI has no GPU), the traced
    program holds no custom_jvp_call, i.e. plain lax.conv_general_dilated."""
    x, w, _ = _data(3, key)
    assert conv_path("cpu") == "custom_jvp"
    assert conv_path("gpu") == conv_path("cuda") == conv_path("tpu") == "xla"
    assert conv_path() == "custom_jvp" and _has_custom_jvp(x, w)  # the tests run on CPU
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(conv_module, "_backend", lambda b=backend: b)
        assert conv_path() == "xla"
        assert not _has_custom_jvp(x, w)
    with force_conv_path("custom_jvp"):  # the override wins over the backend
        assert _has_custom_jvp(x, w)
    with pytest.raises(ValueError, match="unknown path 'cudnn'"):
        with force_conv_path("cudnn"):
            pass


@pytest.mark.parametrize("k,s,p", CASES[:2])  # 3x3 same and 4x4 stride 2
def test_both_paths_agree(k, s, p, key):
    """In float32 the two paths give the same outputs and input / weight gradients
    (batched by vmap, as the models call conv2d)."""
    x, w, _ = _data(k, key, c=3, o=4, h=8)

    def value_and_grads(path):
        with force_conv_path(path):
            def loss(x_, w_):
                y = jax.vmap(lambda xi: conv2d(xi, w_, s, p))(x_)
                return jnp.sum(jnp.tanh(y) * jnp.cos(y)), y

            (_, y), g = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(x, w)
        return y, g

    y1, (gx1, gw1) = value_and_grads("custom_jvp")
    y2, (gx2, gw2) = value_and_grads("xla")
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gx1, gx2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw1, gw2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("k,s,p", CASES[:2])
def test_channels_last_matches_reference_on_both_paths(k, s, p, path, key):
    """conv2d_hwc on a channels-last input is reference_conv2d (NCHW / OIHW, JAX
    autodiff) on the channel-first one, transposed: values, input and weight
    gradients and a JVP in float64, on the custom-JVP (CPU) and the plain-XLA path."""
    with jax.enable_x64(True), force_conv_path(path):
        x, w, kg = _data(k, key)
        x, w = x.astype(jnp.float64), w.astype(jnp.float64)
        x_hwc = jnp.transpose(x, (0, 2, 3, 1))
        ref = jax.vmap(lambda xi: reference_conv2d(xi, w, s, p))(x)
        g = jax.random.normal(kg, ref.shape, jnp.float64)
        dx = jax.random.normal(jax.random.fold_in(kg, 1), x.shape, jnp.float64)

        def loss_ref(x_, w_):
            return jnp.sum(g * jnp.tanh(jax.vmap(lambda xi: reference_conv2d(xi, w_, s, p))(x_)))

        def loss_hwc(x_, w_):  # x_ channel-first; the transposes are outside the layer
            y = jax.vmap(lambda xi: conv2d_hwc(xi, w_, s, p))(jnp.transpose(x_, (0, 2, 3, 1)))
            return jnp.sum(g * jnp.tanh(jnp.transpose(y, (0, 3, 1, 2))))

        out = jax.jit(jax.vmap(lambda xi: conv2d_hwc(xi, w, s, p)))(x_hwc)
        grads = [jax.jit(jax.grad(f, (0, 1)))(x, w) for f in (loss_hwc, loss_ref)]
        jvps = [jax.jvp(lambda x_, f=f: f(x_, w), (x,), (dx,))[1] for f in (loss_hwc, loss_ref)]
    np.testing.assert_allclose(jnp.transpose(out, (0, 3, 1, 2)), ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(jvps[0], jvps[1], rtol=1e-10)
    with pytest.raises(ValueError, match=r"\(O, 6, kh, kw\)"):
        conv2d_hwc(x[0], w, s, p)  # a channel-first example passed as channels-last
