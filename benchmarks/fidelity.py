"""The numbers of docs/models.md (Issue 25): DCN-full's parameter count, how much its
released normalisation (GroupNorm(d, d)) changes a field against min(32, d) groups on
the same weights, and the SRF layer against scipy's Gaussian derivatives in float64.

    python -m benchmarks.fidelity
"""

from __future__ import annotations

import argparse
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxode.fields.dcn import DCNField
from jaxode.models.dcn import build_model, count_params
from jaxode.nn.layers import MIN32, PER_CHANNEL
from jaxode.nn.srf import SRFConv2d, basis_orders, refresh_support


def field_difference(width: int = 64):
    """max |f_per_channel - f_min32| and max |f_per_channel| for one DCN field with the
    same weights, float32 as in training."""
    with jax.enable_x64(False):
        new = refresh_support(DCNField(width, norm=PER_CHANNEL, key=jax.random.PRNGKey(1)),
                              "separable")
        norms = lambda f: (f.norm1, f.norm2, f.norm3)
        old = eqx.tree_at(norms, new, tuple(eqx.tree_at(lambda n: (n.weight, n.bias), MIN32(width),
                                                         (m.weight, m.bias)) for m in norms(new)))
        x = jax.random.normal(jax.random.PRNGKey(2), (width, 15, 15))
        a, b = new(0.5, x), old(0.5, x)
        return float(jnp.abs(a).max()), float(jnp.abs(a - b).max()), old.norm1.groups


def srf_vs_scipy(sigmas=(0.5, 0.8, 1.3, 2.0, 3.2, 5.0, 8.0)):
    """Largest |layer - scipy| / max|scipy| over the six order-2 basis functions, an
    impulse and a random image, both supports, float64."""
    rng = np.random.default_rng(0)
    images = [np.zeros((41, 39)), rng.standard_normal((23, 19))]
    images[0][20, 13] = 1.0
    alpha = np.zeros((6, 1, 6))
    alpha[np.arange(6), 0, np.arange(6)] = 1.0
    worst = 0.0
    for support in ("separable", "exact"):
        for sigma in sigmas:
            r = math.ceil(2 * sigma + 0.5)
            layer = eqx.tree_at(lambda m: (m.alpha, m.scale), SRFConv2d(1, 6, key=jax.random.PRNGKey(0)),
                                (jnp.asarray(alpha), jnp.float64(math.log2(sigma))))
            layer = eqx.filter_jit(refresh_support(layer, support))
            for x in images:
                got = np.asarray(layer(jnp.asarray(x[None])))
                for b, (l, k) in enumerate(basis_orders(2)):
                    want = (-sigma) ** (l + k) * ndimage.gaussian_filter(
                        x, sigma, order=(k, l), radius=r, mode="constant")
                    worst = max(worst, float(np.abs(got[b] - want).max() / np.abs(want).max()))
    return worst


def main(argv=None):
    argparse.ArgumentParser(
        prog="python -m benchmarks.fidelity",
        description="The numbers of docs/models.md: DCN-full's parameter count, the effect of "
        "its GroupNorm(d, d) normalisation, and the SRF layer against scipy (float64).",
    ).parse_args(argv)
    with jax.enable_x64(True):  # float64 here only, not for whoever imports this module
        model = build_model("dcn_full", key=jax.random.PRNGKey(0))
        print(f"dcn_full parameters: {count_params(model):,}")
        peak, diff, groups = field_difference()
        print(f"DCN field, width 64: max |f| {peak:.3g}; "
              f"max |f(64 groups) - f({groups} groups)| {diff:.3g}")
        print(f"SRF layer vs scipy gaussian_filter (float64): max relative difference "
              f"{srf_vs_scipy():.2g}")


if __name__ == "__main__":
    main()
