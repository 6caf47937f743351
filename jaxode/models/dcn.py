"""Deep continuous networks and their baselines (Tomen, Pintea & van Gemert, ICML 2021,
Sec. 2.4 and Fig. 2; baselines of Sec. 3.1 / Table 1; meta-parametrized models of
Table 4; the reconstruction encoder-decoder of supplement A.4).

Layout (Fig. 2), for widths (32, 64, 128) on 32x32 inputs:

    stem conv -> block(32) -> down(32->64) -> block(64) -> down(64->128) -> block(128)
    -> GN -> act -> global average pool -> linear(128 -> classes)

- stem: conv 3x3, no padding, with bias (32 -> 30), or in the "full" models an SRF
  conv with "same" padding (32 -> 32);
- down: GN -> act -> conv 4x4 stride 2 pad 1 with bias, or an SRF conv with stride 2
  ("full" models: 32 -> 16 -> 8);
- block: an ODE block (DCN: `DCNField` on t in [0, 2]; ODE-Net: `ConvODEFunc` on
  [0, 1]) or one pre-activation residual block (ResNet baselines);
- act: CELU in the DCN models, ReLU in ODE-Net and the ResNet baselines;
- GN: GroupNorm(min(32, d), d), except in DCN-full, whose released script uses
  GroupNorm(d, d) (one channel per group) in its ODE functions, down-samplings and
  head: each model's `DCNSpec.norm` says which, per layer kind.

`build_model(name, key=...)` builds any model of `MODEL_NAMES`.  The call follows
the trainer's contract (`jaxode.train`): ``model(x, key=None, inference=False)`` with
x a float batch (N, C, H, W) returns ``(logits, aux)``, `aux` holding per-example
(N,) arrays ``nfe`` and ``steps`` (summed over the ODE blocks), ``nfe_block<i>`` and
``max_steps_reached``; zeros for the ResNet baselines.  `model.forward_with_stats(x)`
returns ``(logits, stats)`` with one `SolveStats` per ODE block.

Small widths: the head is GN(min(32, d), d) -> act -> global average pool.  For a last
width d <= 32 every group holds one channel (an instance norm), and the pooled
features then depend on the image only through each channel's spatial distribution,
not its mean or variance (each channel is normalised over space before it is
averaged): such models barely learn.  The paper's d = 128 has four channels per
group; CPU-sized runs should keep d >= 64.  DCN-full's head is such an instance norm
at every width, as in its released script.

SRF layers carry a static kernel grid (see `jaxode.nn.srf`).  `build_model` uses the
separable support, whose shapes do not depend on sigma: nothing to refresh during
training.  With the masked ``"exact"`` support, call
`jaxode.nn.srf.refresh_support(model)` after each optimiser step.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.dcn import DCNField
from jaxode.nn.layers import MIN32, PER_CHANNEL, GroupRule
from jaxode.nn.srf import SRFConv2d, refresh_support
from jaxode.ode import ODEBlock, SolveConfig, regularizer_stats
from jaxode.train.utils import count_params  # noqa: F401  (re-exported)

__all__ = [
    "DCNSpec",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "PAPER_PARAMS",
    "centre_crop",
    "stats_aux",
    "ResidualBlock",
    "DCNClassifier",
    "DCNAutoencoder",
    "build_model",
    "build_autoencoder",
    "count_params",
    "with_support",
    "learned_scales",
]

celu = jax.nn.celu
relu = jax.nn.relu

class DCNSpec(NamedTuple):
    """One model of Table 1 / Table 5, as its released script builds it.

    - `block`: ``"ode"`` (one ODE block per stage) or ``"res"`` (one residual block);
    - `filters`: the block's convolutions, ``"pixel"`` (3x3 pixel convolutions) or a
      `jaxode.fields.dcn.FILTER_KINDS` SRF parametrisation;
    - `full`: the stem and both down-samplings are SRF layers (the "full" models);
    - `activation`: CELU (DCN models) or ReLU (ODE-Net, ResNet baselines);
    - `t1`: the ODE blocks' end time (DCN: 2, ODE-Net: 1; 0 for residual blocks);
    - `norm`: the `GroupRule` of each layer kind's GroupNorms, keyed ``"block"``
      (inside the ODE function or residual block), ``"down"`` (before each
      down-sampling conv) and ``"head"``.  ``nn.GroupNorm(min(32, d), d)`` in every
      released script except cifar10_dcn_full.py, which uses ``nn.GroupNorm(d, d)``
      (one channel per group) in all three places.
    """

    block: str
    filters: str
    full: bool
    activation: Callable
    t1: float
    norm: Mapping[str, GroupRule]


_MIN32_EVERYWHERE = MappingProxyType({"block": MIN32, "down": MIN32, "head": MIN32})
_PER_CHANNEL_EVERYWHERE = MappingProxyType(
    {"block": PER_CHANNEL, "down": PER_CHANNEL, "head": PER_CHANNEL})

MODEL_SPECS: dict[str, DCNSpec] = {
    "dcn_ode": DCNSpec("ode", "srf", False, celu, 2.0, _MIN32_EVERYWHERE),
    "dcn_full": DCNSpec("ode", "srf", True, celu, 2.0, _PER_CHANNEL_EVERYWHERE),
    "dcn_sigma_ji": DCNSpec("ode", "srf_ji", False, celu, 2.0, _MIN32_EVERYWHERE),
    "dcn_sigma_t": DCNSpec("ode", "sigma_t", False, celu, 2.0, _MIN32_EVERYWHERE),
    "dcn_sigma_t2": DCNSpec("ode", "sigma_t2", False, celu, 2.0, _MIN32_EVERYWHERE),
    "dcn_sigma_alpha_t": DCNSpec("ode", "sigma_alpha_t", False, celu, 2.0, _MIN32_EVERYWHERE),
    "odenet": DCNSpec("ode", "pixel", False, relu, 1.0, _MIN32_EVERYWHERE),
    "resnet_blocks": DCNSpec("res", "pixel", False, relu, 0.0, _MIN32_EVERYWHERE),
    "resnet_srf_blocks": DCNSpec("res", "srf", False, relu, 0.0, _MIN32_EVERYWHERE),
    "resnet_srf_full": DCNSpec("res", "srf", True, relu, 0.0, _MIN32_EVERYWHERE),
}
MODEL_NAMES = tuple(MODEL_SPECS)

#: Table 1 / Table 5 parameter counts of the released layer lists (REFERENCE_FACTS).
PAPER_PARAMS = {
    "dcn_ode": 428_752,
    "dcn_full": 325_843,
    "dcn_sigma_ji": 472_202,
    "dcn_sigma_t": 428_758,
    "dcn_sigma_t2": 428_764,
    "dcn_sigma_alpha_t": 689_494,
    "odenet": 559_562,
    "resnet_blocks": 554_634,
    "resnet_srf_blocks": 425_616,
    "resnet_srf_full": 322_707,
}


class ResidualBlock(eqx.Module):
    """Pre-activation residual block with identity shortcut (the ResNet baselines):
    y = x + conv2(act(GN(conv1(act(GN(x)))))), convolutions 3x3 "same", no bias, or
    SRF convolutions (ResNet-SRF)."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.Module
    norm2: eqx.nn.GroupNorm
    conv2: eqx.Module
    activation: Callable = eqx.field(static=True)

    def __init__(self, channels, srf=False, activation=relu, *, norm: GroupRule = MIN32, key):
        k1, k2 = jax.random.split(key)

        def conv(k):
            if srf:
                return SRFConv2d(channels, channels, key=k)
            return eqx.nn.Conv2d(channels, channels, 3, 1, 1, use_bias=False, key=k)

        self.norm1 = norm(channels)
        self.conv1 = conv(k1)
        self.norm2 = norm(channels)
        self.conv2 = conv(k2)
        self.activation = activation

    def __call__(self, x):
        h = self.conv1(self.activation(self.norm1(x)))
        h = self.conv2(self.activation(self.norm2(h)))
        return x + h


class _Down(eqx.Module):
    """GN -> act -> strided conv (4x4 stride 2 pad 1 with bias, or SRF stride 2)."""

    norm: eqx.nn.GroupNorm
    conv: eqx.Module
    activation: Callable = eqx.field(static=True)

    def __call__(self, x):
        return self.conv(self.activation(self.norm(x)))


def _make_block(spec: DCNSpec, channels, config, key, name):
    act, norm = spec.activation, spec.norm["block"]
    if spec.block == "res":
        return ResidualBlock(channels, srf=(spec.filters == "srf"), activation=act, norm=norm,
                             key=key)
    if spec.filters == "pixel":
        field = ConvODEFunc(channels, norm=norm, activation=act, key=key)
    else:
        field = DCNField(channels, spec.filters, norm=norm, activation=act, key=key)
    return ODEBlock(field, 0.0, spec.t1, config, name=name)


class DCNClassifier(eqx.Module):
    """A three-stage classifier of Fig. 2 (see the module docstring).

    ``model(x, key=None, inference=False)`` with x a float batch (N, C, H, W) returns
    ``(logits (N, classes), aux)`` (see the module docstring);
    ``model.forward_with_stats(x)`` returns ``(logits, stats)``, `stats` a tuple of
    `SolveStats`, one per ODE block.
    ``model.features(x)`` returns the state after each stage (for the reconstruction
    encoder and the pattern-completion analysis).
    """

    stem: eqx.Module
    blocks: tuple
    downs: tuple
    head_norm: eqx.nn.GroupNorm
    head: eqx.nn.Linear
    activation: Callable = eqx.field(static=True)
    name: str = eqx.field(static=True)

    def __init__(self, name="dcn_ode", widths=(32, 64, 128), num_classes=10, in_channels=3,
                 config: SolveConfig | None = None, *, key):
        if name not in MODEL_SPECS:
            raise ValueError(f"unknown DCN model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
        spec = MODEL_SPECS[name]
        full, act = spec.full, spec.activation
        config = SolveConfig() if config is None else config
        self.name = name
        self.activation = act
        keys = jax.random.split(key, 8)
        w = tuple(widths)
        if full:
            self.stem = SRFConv2d(in_channels, w[0], key=keys[0])
        else:
            self.stem = eqx.nn.Conv2d(in_channels, w[0], 3, 1, 0, key=keys[0])
        self.blocks = tuple(
            _make_block(spec, w[i], config, keys[1 + i], f"block{i + 1}")
            for i in range(len(w))
        )
        downs = []
        for i in range(len(w) - 1):
            if full:
                conv = SRFConv2d(w[i], w[i + 1], stride=2, key=keys[4 + i])
            else:
                conv = eqx.nn.Conv2d(w[i], w[i + 1], 4, 2, 1, key=keys[4 + i])
            downs.append(_Down(spec.norm["down"](w[i]), conv, act))
        self.downs = tuple(downs)
        self.head_norm = spec.norm["head"](w[-1])
        self.head = eqx.nn.Linear(w[-1], num_classes, key=keys[7])

    def _check(self, x):
        if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"{self.name}: expected a float batch of shape (N, C, H, W), got shape {x.shape} "
                f"dtype {x.dtype}; convert uint8 images with x.astype(jnp.float32) / 255."
            )

    def _block(self, i, h):
        block = self.blocks[i]
        if isinstance(block, ODEBlock):
            return block.batched(h)
        return jax.vmap(block)(h), None

    def features(self, x, n_stages: int | None = None, input_scales=None):
        """States after each block, ``([h1, h2, h3], stats)``; stop after `n_stages`.

        `input_scales` (one number per block, may be traced): multiply block i's input
        by ``input_scales[i]`` (the contrast probe of Sec. 3.3,
        `jaxode.models.dcn_probes`); None = unscaled."""
        self._check(x)
        n = len(self.blocks) if n_stages is None else n_stages
        h = jax.vmap(self.stem)(x)
        feats, stats = [], []
        for i in range(n):
            if input_scales is not None:
                h = h * jnp.asarray(input_scales[i], h.dtype)
            h, s = self._block(i, h)
            feats.append(h)
            if s is not None:
                stats.append(s)
            if i < len(self.downs) and i + 1 < n:
                h = jax.vmap(self.downs[i])(h)
        return feats, tuple(stats)

    def forward_with_stats(self, x, input_scales=None):
        feats, stats = self.features(x, input_scales=input_scales)
        h = jax.vmap(lambda z: self.activation(self.head_norm(z)))(feats[-1])
        logits = jax.vmap(self.head)(jnp.mean(h, axis=(2, 3)))
        return logits, stats

    def __call__(self, x, *, key=None, inference: bool = False):
        del key, inference  # no dropout in these models
        logits, stats = self.forward_with_stats(x)
        return logits, stats_aux(stats, x.shape[0])


def stats_aux(stats, n: int) -> dict:
    """Per-example (n,) solver statistics from a tuple of `SolveStats` (joint solves'
    scalars are broadcast): ``nfe``, ``steps`` (sums over blocks), ``nfe_block<i>``,
    ``max_steps_reached``."""
    def per(v, dtype=jnp.float32):
        return jnp.broadcast_to(jnp.asarray(v).astype(dtype), (n,))

    aux = {"nfe": jnp.zeros((n,), jnp.float32), "steps": jnp.zeros((n,), jnp.float32),
           "max_steps_reached": jnp.zeros((n,), bool)}
    for i, s in enumerate(stats):
        aux["nfe"] = aux["nfe"] + per(s.nfe)
        aux["steps"] = aux["steps"] + per(s.steps)
        aux[f"nfe_block{i + 1}"] = per(s.nfe)
        aux["max_steps_reached"] = aux["max_steps_reached"] | per(s.max_steps_reached, bool)
        for name, value in regularizer_stats(s).items():  # summed over blocks
            aux[name] = aux.get(name, 0.0) + per(value)
    return aux


def build_model(name: str, *, key, widths=(32, 64, 128), num_classes=10, in_channels=3,
                config: SolveConfig | None = None, jit_init: bool = True,
                support: str = "separable") -> DCNClassifier:
    """Any model of `MODEL_NAMES` (Table 1, Table 5), with every SRF layer's kernel
    support set by `refresh_support(model, support)`: ``"separable"`` (default; the
    filters applied as 1-D passes, fixed shapes for any sigma, 2.4x faster than the
    exact-size convolution for DCN-ODE at the paper's widths on a CPU,
    `docs/dcn_kernel_size.md`) or ``"exact"`` (each layer's grid at r(sigma_init)).

    `jit_init` builds the parameters in one compiled program (eager initialisation
    compiles one small program per parameter shape: ~10x slower on a CPU).
    """
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown DCN model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")

    def make(key):
        return DCNClassifier(name, widths, num_classes, in_channels, config, key=key)

    model = eqx.filter_jit(make)(key) if jit_init else make(key)
    return refresh_support(model, support)


def _upsample2(x):
    c, h, w = x.shape
    return jax.image.resize(x, (c, 2 * h, 2 * w), method="bilinear")


class DCNAutoencoder(eqx.Module):
    """Reconstruction network of supplement A.4: the classifier up to its last block as
    encoder (128 x 7 x 7 for 32x32 inputs), and a decoder

        bilinear x2 -> block(128) -> bilinear x2 -> conv1x1 128->64 -> block(64)
        -> GN -> act -> conv1x1 64->3,

    giving 28x28 images that are compared with the centre 28x28 crop (MSE).  The
    blocks are of the encoder's kind.  ``model(x)`` returns ``(reconstruction, aux)``.
    """

    encoder: DCNClassifier
    block_a: eqx.Module
    reduce: eqx.nn.Conv2d
    block_b: eqx.Module
    out_norm: eqx.nn.GroupNorm
    out_conv: eqx.nn.Conv2d
    activation: Callable = eqx.field(static=True)

    def __init__(self, encoder: DCNClassifier, out_channels=3, config=None, *, key):
        spec = MODEL_SPECS[encoder.name]
        config = SolveConfig() if config is None else config
        k1, k2, k3, k4 = jax.random.split(key, 4)
        w = [b.field.norm1.channels if isinstance(b, ODEBlock) else b.norm1.channels
             for b in encoder.blocks]
        self.encoder = encoder
        self.block_a = _make_block(spec, w[2], config, k1, "dec_block1")
        self.reduce = eqx.nn.Conv2d(w[2], w[1], 1, key=k2)
        self.block_b = _make_block(spec, w[1], config, k3, "dec_block2")
        self.out_norm = spec.norm["head"](w[1])
        self.out_conv = eqx.nn.Conv2d(w[1], out_channels, 1, key=k4)
        self.activation = spec.activation

    def _block(self, block, h):
        if isinstance(block, ODEBlock):
            return block.batched(h)
        return jax.vmap(block)(h), None

    def __call__(self, x, *, key=None, inference: bool = False):
        del key, inference
        feats, stats = self.encoder.features(x)
        h = jax.vmap(_upsample2)(feats[-1])
        h, s1 = self._block(self.block_a, h)
        h = jax.vmap(self.reduce)(jax.vmap(_upsample2)(h))
        h, s2 = self._block(self.block_b, h)
        y = jax.vmap(lambda z: self.out_conv(self.activation(self.out_norm(z))))(h)
        stats = stats + tuple(s for s in (s1, s2) if s is not None)
        return y, stats_aux(stats, x.shape[0])


def build_autoencoder(encoder: DCNClassifier, *, key, config=None,
                      support: str = "separable") -> DCNAutoencoder:
    """The A.4 encoder-decoder around a (trained) classifier `encoder`; SRF supports
    as in `build_model`."""
    def make(encoder, key):
        return DCNAutoencoder(encoder, config=config, key=key)

    return refresh_support(eqx.filter_jit(make)(encoder, key), support)


def centre_crop(x, size: int = 28):
    """The centre size x size crop of a batch (N, C, H, W): the reconstruction target."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def with_support(model, support: str = "separable", max_half_width: int = 8, margin: int = 1):
    """`model` with every SRF layer's kernel support set (docs/dcn_kernel_size.md):
    ``separable`` (1-D passes; the grid only bounds the truncation), ``margin``
    (per-layer masked grid r(sigma_init) + `margin`), or ``exact`` / ``max`` /
    ``switch`` of `jaxode.nn.srf.refresh_support` with `max_half_width`."""
    if support == "margin":
        return refresh_support(model, "exact", margin=margin)
    if support == "separable":
        return refresh_support(model, "separable")
    return refresh_support(model, support, max_half_width=max_half_width)


def learned_scales(model) -> dict:
    """sigma of every SRF layer, by its PyTree path (Fig. 3a / 3b): a float for a
    shared-scale layer, a list for sigma^ji, {"t", "sigma"} at t = 0, 1, 2 for a meta
    layer."""
    import numpy as np

    from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter

    kinds = (SRFConv2d, SRFConv2dPerFilter, MetaSRFConv2d)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
            model, is_leaf=lambda x: isinstance(x, kinds))[0]:
        name = jax.tree_util.keystr(path)
        if isinstance(leaf, SRFConv2d):
            out[name] = float(leaf.sigma)
        elif isinstance(leaf, SRFConv2dPerFilter):
            out[name] = np.asarray(leaf.sigma).ravel().tolist()
        elif isinstance(leaf, MetaSRFConv2d):
            out[name] = {"t": [0.0, 1.0, 2.0],
                         "sigma": [float(leaf.sigma_at(t)) for t in (0.0, 1.0, 2.0)]}
    return out
