"""The vector field of a deep continuous network block (Tomen et al. 2021, Sec. 2.3-2.4,
eq. 2):

    dh/dt = f(t, h) = GN(K2(t, g(K1(t, g(h))))),      g(x) = CELU(GN(x)),

where K1, K2 are SRF convolutions (`jaxode.nn.srf`) that see t as a constant extra
input channel (the released code concatenates t rather than adding d^m t; the
parameter counts of Table 1 need the concatenation).  In the meta-parametrized
variants (Table 4) the filters' sigma and alpha are also functions of t.
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax

from jaxode.fields.conv_odefunc import check_image_state
from jaxode.nn.layers import MIN32, GroupRule
from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter

__all__ = ["DCNField", "FILTER_KINDS"]

#: How the two convolutions of a DCN field are parametrized.
FILTER_KINDS = (
    "srf",  # one sigma per layer (DCN-ODE, DCN-full)
    "srf_ji",  # one sigma per (in, out) pair, 7x7 support (DCN sigma^ji)
    "sigma_t",  # sigma = 2^(s t_s + b)
    "sigma_t2",  # sigma = 2^(s2 t_s^2 + s t_s + b)
    "sigma_alpha_t",  # sigma = 2^(s t_s + b), alpha = alpha t_s + alpha_bias
)


def _make_conv(kind: str, channels: int, order: int, key):
    if kind == "srf":
        return SRFConv2d(channels, channels, order, time_channel=True, key=key)
    if kind == "srf_ji":
        return SRFConv2dPerFilter(channels, channels, order, time_channel=True, key=key)
    if kind == "sigma_t":
        return MetaSRFConv2d(channels, channels, "linear", False, order, key=key)
    if kind == "sigma_t2":
        return MetaSRFConv2d(channels, channels, "quadratic", False, order, key=key)
    if kind == "sigma_alpha_t":
        return MetaSRFConv2d(channels, channels, "linear", True, order, key=key)
    raise ValueError(f"DCNField: unknown filter kind {kind!r}; choose one of {', '.join(FILTER_KINDS)}.")


class DCNField(eqx.Module):
    """f(t, h) = GN(K2(t, act(GN(K1(t, act(GN(h))))))) on one example (C, H, W).

    **Arguments:** `channels`; `kind` (one of `FILTER_KINDS`, default ``"srf"``);
    `order` of the N-jet (2); `norm`, the `GroupRule` of its three GroupNorms
    (min(32, C) groups by default; C groups in the DCN-full script); `activation`
    (CELU, as in the paper); `key`.

    Parameters: three GroupNorms (2 * channels each) and two SRF convolutions
    ((channels + 1) inputs, no bias).
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.Module
    norm2: eqx.nn.GroupNorm
    conv2: eqx.Module
    norm3: eqx.nn.GroupNorm
    activation: Callable = eqx.field(static=True)

    def __init__(self, channels: int, kind: str = "srf", order: int = 2, *,
                 norm: GroupRule = MIN32, activation: Callable = jax.nn.celu, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = norm(channels)
        self.conv1 = _make_conv(kind, channels, order, k1)
        self.norm2 = norm(channels)
        self.conv2 = _make_conv(kind, channels, order, k2)
        self.norm3 = norm(channels)
        self.activation = activation

    def __call__(self, t, h):
        check_image_state("DCNField", h, self.norm1.channels)
        z = self.conv1(t, self.activation(self.norm1(h)))
        z = self.conv2(t, self.activation(self.norm2(z)))
        return self.norm3(z)
