"""The model families of `benchmarks.suite`: for each, the jaxode model at a size, its
loss and inference functions, and its torch / torchdiffeq twin (`benchmarks.torch_ref`).

Every case is a `Case`: ``build(size, tol, key, rng)`` returns the Equinox model and a
batch; ``loss(model, *batch) -> (loss, forward NFE)`` is what a training step
differentiates; ``infer(model, *batch) -> (output, forward NFE)`` is one inference
batch; ``torch_model(model)`` copies the weights into the torch twin (or raises
`NotPorted`), and ``torch_loss`` / ``torch_infer`` compute the same quantities there.
Sizes: ``tiny`` (tests), ``small`` (the default: the whole CPU run in a few minutes),
``paper`` (the papers' widths and batch sizes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "CASES", "MODEL_NAMES", "SIZES", "NotPorted"]


class NotPorted(RuntimeError):
    """The model has no torch twin (yet); the suite reports it instead of a time."""


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    title: str
    build: Callable[..., tuple[Any, tuple]]
    loss: Callable
    infer: Callable
    torch_model: Callable | None
    torch_loss: Callable | None
    torch_infer: Callable | None


# name -> {size: settings}.  "batch" everywhere; the rest per family.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "chen-block": {"tiny": dict(batch=2, channels=8, hw=4),
                   "small": dict(batch=32, channels=64, hw=6),
                   "paper": dict(batch=128, channels=64, hw=6)},
    "chen-odenet": {"tiny": dict(batch=2, channels=8),
                    "small": dict(batch=32, channels=64),
                    "paper": dict(batch=128, channels=64)},
    "carrara-odeonly": {"tiny": dict(batch=2, channels=8),
                        "small": dict(batch=16, channels=64),
                        "paper": dict(batch=128, channels=256)},
    "carrara-resode": {"tiny": dict(batch=2, channels=8),
                       "small": dict(batch=16, channels=64),
                       "paper": dict(batch=128, channels=256)},
    "dcn-ode": {"tiny": dict(batch=2, widths=(8, 8, 8)),
                "small": dict(batch=16, widths=(16, 32, 64)),
                "paper": dict(batch=128, widths=(32, 64, 128))},
    "segnode": {"tiny": dict(batch=2, widths=(4, 8, 8, 8), blocks=1, stem=8, crop=64),
                "small": dict(batch=2, widths=(8, 16, 32, 64), blocks=1, stem=16, crop=64),
                "paper": dict(batch=2, widths=(48, 96, 192, 384), blocks=4, stem=64, crop=128)},
    "node-ew": {"tiny": dict(batch=2, channels=8, hw=4),
                "small": dict(batch=32, channels=64, hw=6),
                "paper": dict(batch=128, channels=64, hw=6)},
    "cnf": {"tiny": dict(batch=16, hidden=8, depth=2),
            "small": dict(batch=100, hidden=32, depth=2),
            "paper": dict(batch=100, hidden=64, depth=3)},
}


def describe(name: str, size: str) -> str:
    """The setting of a case in words (for the tables)."""
    s = SIZES[name][size]
    b = s["batch"]
    if name in ("chen-block", "node-ew"):
        return f"{s['channels']}ch {s['hw']}x{s['hw']}, batch {b}"
    if name == "chen-odenet":
        return f"28x28x1, {s['channels']}ch, batch {b}"
    if name.startswith("carrara"):
        return f"32x32x3, {s['channels']}ch, batch {b}"
    if name == "dcn-ode":
        return f"32x32x3, widths {'/'.join(map(str, s['widths']))}, batch {b}"
    if name == "segnode":
        return (f"{s['crop']}x{s['crop']}x3 crop, widths {'/'.join(map(str, s['widths']))}, "
                f"{s['blocks']} block(s), batch {b}")
    return f"2-D, MLP {s['depth']}x{s['hidden']}, batch {b}"


# ------------------------------------------------------------------ shared pieces


def _config(tol):
    from jaxode.ode import SolveConfig

    return SolveConfig(solver="dopri5", rtol=tol, atol=tol, adjoint="backsolve")


def _images(rng, batch, channels, hw, classes=10):
    x = rng.uniform(0.0, 1.0, (batch, channels, hw, hw)).astype(np.float32)
    y = rng.integers(0, classes, batch).astype(np.int32)
    return x, y


def _ce(logits, y):
    import jax.numpy as jnp
    import optax

    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _classifier_loss(model, x, y):
    logits, aux = model(x, inference=False)
    return _ce(logits, y), aux["nfe"][0]


def _classifier_infer(model, x, y):
    del y
    logits, aux = model(x, inference=True)
    return logits, aux["nfe"][0]


def _torch_ce(tmodel, x, y):
    import torch

    return torch.nn.functional.cross_entropy(tmodel(x), y.long())


def _torch_first(tmodel, *batch):
    return tmodel(batch[0])


def _block_loss(block, z0):
    import jax.numpy as jnp

    z1, stats = block.batched(z0)
    return jnp.mean(z1**2), stats.nfe


def _block_infer(block, z0):
    z1, stats = block.batched(z0)
    return z1, stats.nfe


def _torch_mean_square(tmodel, z0):
    return (tmodel(z0) ** 2).mean()


# -------------------------------------------------------------------- the cases


def _build_chen_block(s, tol, key, rng):
    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.ode import ODEBlock

    block = ODEBlock(ConvODEFunc(s["channels"], key=key), 0.0, 1.0, _config(tol), name="chen-block")
    z0 = rng.standard_normal((s["batch"], s["channels"], s["hw"], s["hw"])).astype(np.float32)
    return block, (z0,)


def _torch_chen_block(block):
    from benchmarks.torch_ref import TorchConvODEFunc, TorchODEBlock

    return TorchODEBlock.from_jax(block, TorchConvODEFunc.from_jax(block.field))


def _build_classifier(factory, in_channels, hw):
    def build(s, tol, key, rng):
        model = factory(s, tol, key)
        return model, _images(rng, s["batch"], in_channels, hw)

    return build


def _chen_odenet(s, tol, key):
    from jaxode.models.classifiers import chen_odenet

    return chen_odenet(channels=s["channels"], tol=tol, key=key)


def _carrara(name):
    def make(s, tol, key):
        from jaxode.models.classifiers import carrara_odeonly, carrara_resode

        factory = carrara_odeonly if name == "odeonly" else carrara_resode
        # dropout 0: the random masks of the two frameworks could not be the same
        return factory(channels=s["channels"], dropout=0.0, tol=tol, key=key)

    return make


def _torch_odenet(model):
    from benchmarks.torch_ref import TorchODENet

    return TorchODENet.from_jax(model)


def _build_dcn(s, tol, key, rng):
    from jaxode.models.dcn import build_model

    model = build_model("dcn_ode", widths=s["widths"], config=_config(tol), key=key)
    return model, _images(rng, s["batch"], 3, 32)


def _torch_dcn(model):
    """The reference's formulation: one conv per SRF layer with the exact-size
    (2 r(sigma) + 1)^2 kernel built from the basis (jaxode's model runs separable)."""
    from benchmarks.torch_ref import TorchDCNClassifier
    from jaxode.nn.srf import refresh_support

    return TorchDCNClassifier.from_jax(refresh_support(model, "exact"))


def _build_segnode(s, tol, key, rng):
    from jaxode.models.segnode import SegNode, SegNodeConfig, solve_config

    cfg = SegNodeConfig(num_classes=11, widths=tuple(s["widths"]), blocks=s["blocks"],
                        stem_channels=s["stem"], solve=solve_config(rtol=tol, atol=tol))
    model = SegNode(cfg, key=key)
    c, b = s["crop"], s["batch"]
    x = rng.standard_normal((b, 3, c, c)).astype(np.float32)
    y = rng.integers(0, 11, (b, c, c)).astype(np.int32)
    return model, (x, y)


def _segnode_loss(model, x, y):
    import jax.numpy as jnp

    scores, stats = model.batched(x)  # (B, K, H, W)
    return _ce(jnp.moveaxis(scores, 1, -1), y), stats.nfe


def _segnode_infer(model, x, y):
    del y
    scores, stats = model.batched(x)
    return scores, stats.nfe


def _build_node_ew(s, tol, key, rng):
    import jax

    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.fields.evolving import EvolvingODE

    k1, k2 = jax.random.split(key)
    # init_scale 0.01: the weights do move (a trained NODE-EW, not the g = 0 start)
    ode = EvolvingODE(ConvODEFunc(s["channels"], key=k1), "elementwise", 0.0, 1.0, _config(tol),
                      key=k2, hidden=8, init_scale=0.01, name="node-ew")
    z0 = rng.standard_normal((s["batch"], s["channels"], s["hw"], s["hw"])).astype(np.float32)
    return ode, (z0,)


def _node_ew_loss(ode, z0):
    import jax.numpy as jnp

    (z1, _), stats = ode.batched(z0)
    return jnp.mean(z1**2), stats.nfe


def _node_ew_infer(ode, z0):
    (z1, _), stats = ode.batched(z0)
    return z1, stats.nfe


def _torch_node_ew(ode):
    from benchmarks.torch_ref import TorchEvolvingBlock

    return TorchEvolvingBlock.from_jax(ode)


def _build_cnf(s, tol, key, rng):
    import jax

    from jaxode.data.densities import sample_density
    from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
    from jaxode.ode import ODEBlock

    k1, k2 = jax.random.split(key)
    cnf = CNF(ODEBlock(CNFField(ConcatMLP(2, s["hidden"], s["depth"], key=k1)), 0.0, 1.0,
                       _config(tol), name="cnf"))
    seed = int(rng.integers(0, 2**31 - 1))
    x = np.asarray(sample_density("moons", jax.random.key(seed, impl="rbg"), s["batch"]), np.float32)
    return cnf, (x,)


def _cnf_loss(cnf, x):
    import jax.numpy as jnp

    logp, stats = cnf.log_prob_batched(x)
    return -jnp.mean(logp), stats.nfe


def _cnf_infer(cnf, x):
    logp, stats = cnf.log_prob_batched(x)
    return logp, stats.nfe


def _torch_cnf(cnf):
    from benchmarks.torch_ref import TorchCNF

    return TorchCNF.from_jax(cnf)


def _torch_cnf_loss(tmodel, x):
    return -tmodel(x).mean()


def _torch_segnode(model):
    from benchmarks.torch_ref import TorchSegNode

    return TorchSegNode.from_jax(model)


CASES: dict[str, Case] = {c.name: c for c in (
    Case("chen-block", "Chen et al. MNIST ODE-Net: ODE block alone", _build_chen_block,
         _block_loss, _block_infer, _torch_chen_block, _torch_mean_square, _torch_first),
    Case("chen-odenet", "Chen et al. MNIST ODE-Net (whole)", _build_classifier(_chen_odenet, 1, 28),
         _classifier_loss, _classifier_infer, _torch_odenet, _torch_ce, _torch_first),
    Case("carrara-odeonly", "Carrara et al. ODE-only Net", _build_classifier(_carrara("odeonly"), 3, 32),
         _classifier_loss, _classifier_infer, _torch_odenet, _torch_ce, _torch_first),
    Case("carrara-resode", "Carrara et al. Res-ODE Net", _build_classifier(_carrara("resode"), 3, 32),
         _classifier_loss, _classifier_infer, _torch_odenet, _torch_ce, _torch_first),
    Case("dcn-ode", "Tomen et al. DCN-ODE (SRF fields, 3 blocks on [0, 2])", _build_dcn,
         _classifier_loss, _classifier_infer, _torch_dcn, _torch_ce, _torch_first),
    Case("segnode", "SegNode (multi-resolution HRNet field)", _build_segnode,
         _segnode_loss, _segnode_infer, _torch_segnode, _torch_ce, _torch_first),
    Case("node-ew", "NODE-EW block (ConvODEFunc with evolving weights)", _build_node_ew,
         _node_ew_loss, _node_ew_infer, _torch_node_ew, _torch_mean_square, _torch_first),
    Case("cnf", "2-D CNF (exact trace), moons", _build_cnf,
         _cnf_loss, _cnf_infer, _torch_cnf, _torch_cnf_loss, _torch_first),
)}
MODEL_NAMES = tuple(CASES)
