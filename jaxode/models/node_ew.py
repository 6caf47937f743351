"""NODE-EW classifier (He, Xie, Lin 2019, Sec. 4.2, Table 1).

The MNIST network of Chen et al. (down-sampling -> ODE block -> head), with the ODE
block's weights evolving in time:

    dz/dt = f(t, z; theta(t)),   dtheta/dt = g(t, theta; theta_1),   theta(0) = theta_0,

f = `ConvODEFunc` (GN -> ReLU -> ConcatConv3x3 -> GN -> ReLU -> ConcatConv3x3 -> GN at
64 channels); theta = all of f's arrays (75,392 numbers: the two convolutions and the
three GroupNorm affine pairs).  g is `ElementwiseDynamics` (hidden 8: 10 tensors x 33 =
330 parameters) or `LowRankDynamics` (rank 2: 2,600 parameters), both zero at
initialisation, so a fresh NODE-EW computes exactly what the fixed-weight ODE-Net
(`jaxode.models.classifiers.chen_odenet`, 208,266 parameters) with the same theta_0
computes.  Parameters: 208,266 + 330 (elementwise) or + 2,600 (low-rank).

The model follows the trainer's contract (`jaxode.train`):
``logits, aux = model(x, key=..., inference=...)`` on a float batch (N, 1, 28, 28).
It is ``make_model("node-ew", ...)`` in `jaxode.models.MODELS`, so
``python -m experiments.classify --config node-ew-mnist`` trains it and
`jaxode.train.load_run` reads its run folder.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.evolving import EvolvingODE
from jaxode.models.classifiers import (
    CHEN_NORM,
    Head,
    Sequence,
    _check_input,
    _check_size,
    chen_downsampling,
    chen_odenet,
)
from jaxode.ode import SolveConfig

__all__ = ["NODEEWClassifier", "node_ew_mnist", "chen_odenet"]


class NODEEWClassifier(eqx.Module):
    """stem -> NODE-EW block (z, theta)(0) -> z(t1) -> head.

    `upsample` k > 1 repeats every pixel k x k times before the stem (nearest
    neighbour, exact): Chen's down-sampling turns 8x8 digits into 1x1 maps, on which
    GroupNorm makes the field a near step function and the adjoint solve runs out of
    steps, while 24x24 ones give 5x5 maps (MNIST: 6x6).  For smoke runs on digits."""

    stem: Sequence
    ode: EvolvingODE
    head: Head
    in_channels: int = eqx.field(static=True)
    upsample: int = eqx.field(static=True, default=1)

    def __call__(self, x, *, key=None, inference: bool = False):
        _check_input(type(self).__name__, x, self.in_channels)
        if self.upsample > 1:
            x = x.repeat(self.upsample, axis=2).repeat(self.upsample, axis=3)
        z0 = _check_size(type(self).__name__, x, jax.vmap(self.stem)(x))
        (z1, _), stats = self.ode.batched(z0)
        n = x.shape[0]

        def per_example(v):
            v = jnp.asarray(v)
            return v if v.shape == (n,) else jnp.broadcast_to(v, (n,))

        aux = {
            "nfe": per_example(stats.nfe.astype(jnp.float32)),
            "steps": per_example(stats.steps.astype(jnp.float32)),
            "max_steps_reached": per_example(stats.max_steps_reached),
        }
        return self.head(z1, key=key, inference=inference), aux


def node_ew_mnist(num_classes: int = 10, *, in_channels: int = 1, channels: int = 64,
                  dynamics: str = "elementwise", hidden: int = 8, rank: int = 2,
                  tol: float = 1e-3, dropout: float = 0.0, solve: SolveConfig | None = None,
                  upsample: int = 1, key) -> NODEEWClassifier:
    """NODE-EW on Chen et al.'s MNIST network ('conv' down-sampling).  With the same
    `key`, theta_0, the stem and the head equal those of
    ``chen_odenet(..., key=key)``, so the two models start from the same function.
    `dynamics`: g, ``elementwise`` (`hidden` units) or ``lowrank`` (`rank`);
    `upsample`: see `NODEEWClassifier`."""
    if isinstance(upsample, bool) or not isinstance(upsample, int) or upsample < 1:
        raise ValueError(f"node_ew_mnist: upsample must be an int >= 1, got {upsample!r}.")
    k1, k2, k3 = jax.random.split(key, 3)
    field = ConvODEFunc(channels, norm=CHEN_NORM["field"], key=k2)
    config = SolveConfig(rtol=tol, atol=tol) if solve is None else solve
    ode = EvolvingODE(field, dynamics, 0.0, 1.0, config, key=jax.random.fold_in(k2, 1),
                      hidden=hidden, rank=rank, name="ode_ew")
    return NODEEWClassifier(chen_downsampling(in_channels, channels, key=k1), ode,
                            Head(channels, num_classes, dropout, norm=CHEN_NORM["head"], key=k3),
                            in_channels, upsample)
