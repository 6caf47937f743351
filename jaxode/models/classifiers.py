"""Image classifiers built from residual blocks or one ODE block.

Carrara et al., "Evaluation of continuous image features learned by ODE Nets"
(Sec. 3, Table 1) compare three CIFAR-10 networks that delegate more and more of the
feature extraction to an ODE block

    z(1) = z(0) + int_0^1 f(t, z(t); theta) dt,        f = `ConvODEFunc`,

- **Residual Net**: stem (conv + two down-sampling residual blocks) + six residual
  blocks + head (7,921,290 parameters);
- **Res-ODE Net**: the same stem, the six blocks replaced by one ODE block (2,023,562);
- **ODE-only Net**: a single 4x4 stride-2 convolution, then the ODE block (1,201,930).

Chen et al. (2018, Sec. 7.1) use the same ODE block after a small convolutional
down-sampling on MNIST (ODE-Net, 208,266 parameters with the 'conv' down-sampling of
torchdiffeq's example) and compare with six residual blocks in its place (ResNet,
576,778 with the same 'conv' down-sampling).

All models share one calling convention (see `jaxode.train`)::

    logits, aux = model(x, key=key, inference=False)   # x: float32 (N, C, H, W)

``aux`` holds per-example arrays of shape (N,): ``nfe`` and ``steps`` of the forward
solve (zeros for residual networks) and ``max_steps_reached``.  ``features(x, ts)``
returns globally average-pooled intermediate representations (N, T, C) for the
transfer experiment: z(t) at the times `ts` from one dense-output solve for ODE
models, the outputs of the residual blocks for residual networks.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.nn.layers import MIN32, GroupRule
from jaxode.ode import ODEBlock, SolveConfig, regularizer_stats

#: GroupNorm rule per layer kind, as the released code builds each family:
#: ``norm(dim) = nn.GroupNorm(min(32, dim), dim)`` in Carrara et al.'s model.py (stem
#: blocks, residual blocks, ODE function, head) and in torchdiffeq's MNIST example
#: (down-sampling, ODE function, residual blocks, head).
CARRARA_NORM = MappingProxyType({"block": MIN32, "field": MIN32, "head": MIN32})
CHEN_NORM = MappingProxyType({"down": MIN32, "block": MIN32, "field": MIN32, "head": MIN32})


def relu(x):
    """ReLU, the activation of every classifier in this module."""
    return jax.nn.relu(x)


# ----------------------------------------------------------------------------- layers


class PreActBlock(eqx.Module):
    """Pre-activation residual block (He et al. 2016), as in Chen et al.'s ResNet:

    a = act(GN(x));  y = conv3x3(act(GN(conv3x3_s(a)))) + shortcut,

    with shortcut = conv1x1_s(a) (no bias) when the block down-samples or changes the
    width, x otherwise.  Convolutions have no bias; act is ReLU and the GroupNorms
    follow `norm` (min(32, C) groups) unless told otherwise.  One example (C, H, W).
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    shortcut: eqx.nn.Conv2d | None
    activation: Callable = eqx.field(static=True)

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 norm: GroupRule = MIN32, activation: Callable = relu, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = norm(in_channels)
        self.conv1 = eqx.nn.Conv2d(in_channels, out_channels, 3, stride, 1, use_bias=False, key=k1)
        self.norm2 = norm(out_channels)
        self.conv2 = eqx.nn.Conv2d(out_channels, out_channels, 3, 1, 1, use_bias=False, key=k2)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = eqx.nn.Conv2d(in_channels, out_channels, 1, stride, 0,
                                          use_bias=False, key=k3)
        else:
            self.shortcut = None
        self.activation = activation

    def __call__(self, x):
        a = self.activation(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        h = self.conv1(a)
        h = self.conv2(self.activation(self.norm2(h)))
        return h + skip


class Sequence(eqx.Module):
    """Layers applied in order to one example (each a callable ``layer(x)``)."""

    layers: tuple

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Head(eqx.Module):
    """Classifier head: GN -> act -> global average pool -> dropout -> linear
    (Chen et al.'s and Carrara et al.'s ``FCClassifier``; act = ReLU, GN with
    min(32, C) groups unless `norm` says otherwise)."""

    norm: eqx.nn.GroupNorm
    linear: eqx.nn.Linear
    dropout: float = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0, *,
                 norm: GroupRule = MIN32, activation: Callable = relu, key):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Head: dropout must lie in [0, 1), got {dropout!r}.")
        self.norm = norm(channels)
        self.linear = eqx.nn.Linear(channels, num_classes, key=key)
        self.dropout = float(dropout)
        self.activation = activation

    def pool(self, z):
        """act(GN(z)) averaged over space: (C, H, W) -> (C,)."""
        return jnp.mean(self.activation(self.norm(z)), axis=(-2, -1))

    def __call__(self, zs, *, key=None, inference: bool = False):
        """A batch (N, C, H, W) -> logits (N, classes)."""
        h = jax.vmap(self.pool)(zs)
        if self.dropout > 0 and not inference:
            if key is None:
                raise ValueError("Head: dropout needs a PRNG key in training (inference=False).")
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout), jnp.zeros_like(h))
        return jax.vmap(self.linear)(h)


def _check_input(name, x, channels):
    if (x.ndim == 4 and x.shape[1] != channels and x.shape[1] in (1, 3) and channels in (1, 3)
            and x.shape[-1] != channels):
        raise ValueError(
            f"{name} was built for {channels}-channel images but got {x.shape[1]}-channel "
            f"ones (batch {x.shape}): a model trained on {'grey' if channels == 1 else 'RGB'} "
            f"images cannot read {'grey' if x.shape[1] == 1 else 'RGB'} ones; use data with "
            f"{channels} channel(s), or a model trained on such data."
        )
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects a float batch of shape (N, {channels}, H, W), got {x.shape}; "
            "convert uint8 NHWC images with jaxode.data.augment.to_model_input."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} expects floating-point input, got dtype {x.dtype}; convert uint8 NHWC "
            "images with jaxode.data.augment.to_model_input (float32 in [0, 1])."
        )
    if not isinstance(x, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name}: the input batch contains NaN or Inf values; clean the data first.")


def _check_size(name, x, h):
    if min(h.shape[-2:]) < 1:
        raise ValueError(f"{name}: images of {x.shape[-2]}x{x.shape[-1]} pixels are too small "
                         f"for this model (its stem leaves {h.shape[-2:]}); use larger images.")
    return h


def _pool(z):
    return jnp.mean(z, axis=(-2, -1))


# ----------------------------------------------------------------------------- models


class ODENetClassifier(eqx.Module):
    """stem -> ODE block z(0) -> z(t1) -> head.  The Res-ODE and ODE-only nets of
    Carrara et al. and Chen et al.'s MNIST ODE-Net.

    ``model(x, key=..., inference=...)`` -> ``(logits, aux)``; the batch is solved in
    the ODE block's `SolveConfig.batch_mode` (``joint`` for training as torchdiffeq,
    ``per_sample`` for per-image step counts).
    """

    stem: Sequence
    ode: ODEBlock
    head: Head
    in_channels: int = eqx.field(static=True)

    def _z0(self, x):
        _check_input(type(self).__name__, x, self.in_channels)
        return _check_size(type(self).__name__, x, jax.vmap(self.stem)(x))

    def __call__(self, x, *, key=None, inference: bool = False):
        z0 = self._z0(x)
        z1, stats = self.ode.batched(z0)
        n = x.shape[0]
        aux = {
            "nfe": jnp.broadcast_to(stats.nfe.astype(jnp.float32), (n,)),
            "steps": jnp.broadcast_to(stats.steps.astype(jnp.float32), (n,)),
            "max_steps_reached": jnp.broadcast_to(stats.max_steps_reached, (n,)),
        }
        for name, value in regularizer_stats(stats).items():  # for the trainer's loss
            aux[name] = jnp.broadcast_to(value, (n,))
        return self.head(z1, key=key, inference=inference), aux

    def features(self, x, ts, *, through_head: bool = False):
        """Pooled z(t) at the increasing times `ts` in [t0, t1], from one solve:
        shape (N, len(ts), C).  `through_head` applies the head's GN -> ReLU before
        pooling (as Carrara et al.'s released feature extractor does); by default
        z(t) is pooled directly (the paper's text)."""
        zs, _ = self.ode.batched(self._z0(x), ts=ts)  # (N, T, C, H, W)
        pool = self.head.pool if through_head else _pool
        return jax.vmap(jax.vmap(pool))(zs)


class ResNetClassifier(eqx.Module):
    """stem -> residual blocks -> head.  Carrara et al.'s Residual Net and Chen et
    al.'s six-block ResNet baseline; aux statistics are zeros."""

    stem: Sequence
    blocks: tuple[PreActBlock, ...]
    head: Head
    in_channels: int = eqx.field(static=True)

    def _body(self, x):
        _check_input(type(self).__name__, x, self.in_channels)
        h = _check_size(type(self).__name__, x, jax.vmap(self.stem)(x))
        outs = []
        for block in self.blocks:
            h = jax.vmap(block)(h)
            outs.append(h)
        return h, outs

    def __call__(self, x, *, key=None, inference: bool = False):
        h, _ = self._body(x)
        n = x.shape[0]
        zeros = jnp.zeros((n,), jnp.float32)
        aux = {"nfe": zeros, "steps": zeros, "max_steps_reached": jnp.zeros((n,), bool)}
        return self.head(h, key=key, inference=inference), aux

    def features(self, x, ts=None, *, through_head: bool = False):
        """Pooled outputs of the residual blocks, shape (N, blocks, C) (`ts` is
        ignored; it is accepted for a common signature with the ODE models)."""
        del ts
        _, outs = self._body(x)
        pool = self.head.pool if through_head else _pool
        return jnp.stack([jax.vmap(pool)(h) for h in outs], axis=1)


# ---------------------------------------------------------------------------- factories


def _solve_config(tol, solver="dopri5", adjoint="backsolve", **kw) -> SolveConfig:
    return SolveConfig(solver=solver, rtol=tol, atol=tol, adjoint=adjoint, **kw)


def _ode_block(channels, key, solve: SolveConfig | None, t1=1.0, tol=1e-3,
               norm: GroupRule = MIN32):
    field = ConvODEFunc(channels, norm=norm, key=key)
    return ODEBlock(field, 0.0, t1, _solve_config(tol) if solve is None else solve, name="ode")


def carrara_stem(in_channels: int = 3, channels: int = 256, *, key) -> Sequence:
    """conv3x3 in->64 (valid, bias) -> block 64->64 /2 -> block 64->channels /2."""
    k1, k2, k3 = jax.random.split(key, 3)
    return Sequence((
        eqx.nn.Conv2d(in_channels, 64, 3, 1, 0, use_bias=True, key=k1),
        PreActBlock(64, 64, 2, norm=CARRARA_NORM["block"], key=k2),
        PreActBlock(64, channels, 2, norm=CARRARA_NORM["block"], key=k3),
    ))


def carrara_resnet(num_classes: int = 10, *, in_channels: int = 3, channels: int = 256,
                   dropout: float = 0.5, key) -> ResNetClassifier:
    """Carrara et al.'s Residual Net (Table 1: 7.92M parameters at 256 channels).

    The stem's second residual block (64 -> 256) is stored as the first of `blocks`,
    so `features` returns the last seven residual modules, as in the paper's Sec. 4.2.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    stem = carrara_stem(in_channels, channels, key=k1)
    blocks = (stem.layers[2],) + tuple(
        PreActBlock(channels, channels, 1, norm=CARRARA_NORM["block"], key=k)
        for k in jax.random.split(k2, 6))
    head = Head(channels, num_classes, dropout, norm=CARRARA_NORM["head"], key=k3)
    return ResNetClassifier(Sequence(stem.layers[:2]), blocks, head, in_channels)


def _ode_net(make_stem, channels, num_classes, dropout, tol, solve, in_channels,
             key, norm) -> ODENetClassifier:
    """stem -> ODE block (`ConvODEFunc` on [0, 1]) -> head: the shape shared by the
    Res-ODE, ODE-only and Chen ODE-Nets.  `make_stem(key)` builds the stem; `norm`
    is the family's GroupNorm rules (`CARRARA_NORM`, `CHEN_NORM`)."""
    k1, k2, k3 = jax.random.split(key, 3)
    block = _ode_block(channels, k2, solve, tol=tol, norm=norm["field"])
    head = Head(channels, num_classes, dropout, norm=norm["head"], key=k3)
    return ODENetClassifier(make_stem(k1), block, head, in_channels)


def carrara_resode(num_classes: int = 10, *, in_channels: int = 3, channels: int = 256,
                   dropout: float = 0.5, tol: float = 1e-3, solve: SolveConfig | None = None,
                   key) -> ODENetClassifier:
    """Carrara et al.'s Res-ODE Net (Table 1: 2.02M parameters at 256 channels)."""
    return _ode_net(lambda k: carrara_stem(in_channels, channels, key=k), channels,
                    num_classes, dropout, tol, solve, in_channels, key, CARRARA_NORM)


def odeonly_net(num_classes: int = 10, *, in_channels: int = 3, channels: int = 256,
                stem_kernel: int = 4, stem_stride: int = 2, stem_padding: int = 1,
                dropout: float = 0.5, tol: float = 1e-3, solve: SolveConfig | None = None,
                key) -> ODENetClassifier:
    """Carrara et al.'s ODE-only Net: one conv (kernel 4, stride 2, padding 1, bias,
    no activation: 32x32 -> 16x16) then the ODE block and the head (Table 1: 1.20M
    parameters at 256 channels).  The stem's size is adjustable for small images
    (e.g. 8x8 digits: kernel 3, stride 1)."""
    def stem(k):
        return Sequence((eqx.nn.Conv2d(in_channels, channels, stem_kernel, stem_stride,
                                       stem_padding, use_bias=True, key=k),))

    return _ode_net(stem, channels, num_classes, dropout, tol, solve, in_channels, key,
                    CARRARA_NORM)


carrara_odeonly = odeonly_net


def chen_downsampling(in_channels: int = 1, channels: int = 64, *, key) -> Sequence:
    """torchdiffeq's 'conv' down-sampling: conv3x3 (valid, bias) -> GN -> ReLU ->
    conv4x4/2 -> GN -> ReLU -> conv4x4/2 (28x28 -> 26 -> 13 -> 6)."""
    k1, k2, k3 = jax.random.split(key, 3)
    norm = CHEN_NORM["down"]
    return Sequence((
        eqx.nn.Conv2d(in_channels, channels, 3, 1, 0, use_bias=True, key=k1),
        norm(channels), eqx.nn.Lambda(relu),
        eqx.nn.Conv2d(channels, channels, 4, 2, 1, use_bias=True, key=k2),
        norm(channels), eqx.nn.Lambda(relu),
        eqx.nn.Conv2d(channels, channels, 4, 2, 1, use_bias=True, key=k3),
    ))


def chen_odenet(num_classes: int = 10, *, in_channels: int = 1, channels: int = 64,
                tol: float = 1e-3, dropout: float = 0.0, solve: SolveConfig | None = None,
                key) -> ODENetClassifier:
    """Chen et al.'s MNIST ODE-Net, 'conv' down-sampling variant (208,266 params)."""
    return _ode_net(lambda k: chen_downsampling(in_channels, channels, key=k), channels,
                    num_classes, dropout, tol, solve, in_channels, key, CHEN_NORM)


def chen_resnet(num_classes: int = 10, *, in_channels: int = 1, channels: int = 64,
                dropout: float = 0.0, key) -> ResNetClassifier:
    """Chen et al.'s ResNet baseline: six residual blocks in place of the ODE block,
    'conv' down-sampling variant (576,778 params; the paper's 0.60M is the 'res'
    down-sampling variant, 601,482)."""
    k1, k2, k3 = jax.random.split(key, 3)
    blocks = tuple(PreActBlock(channels, channels, 1, norm=CHEN_NORM["block"], key=k)
                   for k in jax.random.split(k2, 6))
    head = Head(channels, num_classes, dropout, norm=CHEN_NORM["head"], key=k3)
    return ResNetClassifier(chen_downsampling(in_channels, channels, key=k1), blocks, head,
                            in_channels)


# NODE-EW (He et al. 2019) builds on Chen's network above, so its module imports this
# one; importing it here, once everything it uses is defined, closes the cycle (the
# package's __init__ always imports this module first).
from jaxode.models.node_ew import node_ew_mnist

MODELS: dict[str, Callable[..., eqx.Module]] = {
    "carrara-resnet": carrara_resnet,
    "carrara-resode": carrara_resode,
    "carrara-odeonly": carrara_odeonly,
    "chen-odenet": chen_odenet,
    "chen-resnet": chen_resnet,
    "node-ew": node_ew_mnist,
}


def make_model(name: str, **kwargs) -> eqx.Module:
    """Build a model by name (see `MODELS`); keyword arguments go to its factory."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    for arg, low in (("num_classes", 2), ("in_channels", 1), ("channels", 1)):
        v = kwargs.get(arg)
        if v is not None and (isinstance(v, bool) or not hasattr(v, "__index__") or v < low):
            raise ValueError(f"make_model({name!r}): {arg} must be an int >= {low}, got {v!r}.")
    return MODELS[name](**kwargs)


ADAPTIVE = ("dopri5", "tsit5", "bosh3")


def build_classifier(settings: Mapping[str, Any], num_classes: int, in_channels: int, key):
    """The classifier a run's settings describe (the fields of
    `experiments.configs.classify.ClassifyConfig`, as saved in a run's
    ``config.json["classify"]``): `model`, `channels`, `dropout`, `model_kwargs` and,
    for ODE models, the SolveConfig from `solver`, `tol` (rtol = atol), `adjoint`,
    `max_steps` and `euler_steps` (the steps of a fixed-step solver)."""
    name = settings["model"]
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    kwargs = dict(settings.get("model_kwargs") or ())
    kwargs.update(num_classes=num_classes, in_channels=in_channels,
                  dropout=settings.get("dropout", 0.0), key=key)
    if settings.get("channels") is not None:
        kwargs["channels"] = settings["channels"]
    if "resnet" not in name:
        solver, tol = settings.get("solver", "dopri5"), settings.get("tol", 1e-3)
        fixed = {} if solver in ADAPTIVE else {"num_steps": settings.get("euler_steps", 10)}
        kwargs["solve"] = SolveConfig(solver=solver, rtol=tol, atol=tol,
                                      adjoint=settings.get("adjoint", "backsolve"),
                                      max_steps=settings.get("max_steps", 4096), **fixed)
    return make_model(name, **kwargs)
