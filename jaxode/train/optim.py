"""Optimisers for `jaxode.train.fit`: the papers' SGD with momentum, and parameter groups.

`fit` accepts any ``optax.GradientTransformation`` over the trainable parameters
(``eqx.filter(model, jaxode.ode.trainable(model))``).  Its step is

    p <- p + eta_t * u_t,        u_t = the optimiser's update (optax convention),

where eta_t is the `TrainConfig` learning-rate schedule (`jaxode.train.schedules`)
*relative to* ``config.lr`` -- 1 throughout for ``lr_schedule="constant"``, so an
``optax.adam(1e-3)`` (with or without its own optax schedule) runs unchanged.  The
default optimiser, `sgd_momentum`, is the exception: it gives the *direction* only
(PyTorch's ``torch.optim.SGD`` without its learning rate), and eta_t is the absolute
rate, so the step is exactly PyTorch's  buf <- mu buf + (g + wd p);  p <- p - lr_t buf.

Parameter groups (`optax.multi_transform` of stateless rescalings, so the optimiser's
state -- and so a checkpoint -- is the same with or without them):

- `scale_theta1`: NODE-EW's separate learning rate of theta_1, the parameters of the
  weight dynamics g (He, Xie, Lin 2019, Sec. 3; `TrainConfig.g_lr_scale`);
- `freeze_all_but`: train one part (e.g. a new head), keep the rest fixed (a frozen
  backbone for transfer fine-tuning).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax.tree_util as jtu
import optax

from jaxode.train.config import TrainConfig


@functools.lru_cache(maxsize=64)
def _sgd_momentum(momentum: float, nesterov: bool, weight_decay: float,
                  grad_clip: float | None) -> optax.GradientTransformation:
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.trace(decay=momentum, nesterov=nesterov))
    parts.append(optax.scale(-1.0))  # a descent direction; `fit` multiplies by lr_t
    return optax.chain(*parts)


def sgd_momentum(config: TrainConfig) -> optax.GradientTransformation:
    """SGD with momentum in PyTorch's form, without the learning rate:
    g <- clip(g) (global norm `grad_clip`), g <- g + weight_decay * p,
    buf <- momentum * buf + g (Nesterov: g + momentum * buf), update = -buf.

    Cached per setting: the same object for the same settings, so `fit`'s jitted step
    (which takes the optimiser as a static argument) is compiled once."""
    return _sgd_momentum(float(config.momentum), bool(config.nesterov),
                         float(config.weight_decay),
                         None if config.grad_clip is None else float(config.grad_clip))


@functools.lru_cache(maxsize=64)
def scale_groups(labels: Callable, factors: tuple[tuple[str, float], ...]
                 ) -> optax.GradientTransformation:
    """Multiply the update of each parameter group by its factor (0: frozen).

    `labels(params)` returns the params' PyTree with a group name at every leaf;
    `factors` is ``((name, factor), ...)`` covering every name.  Stateless: chaining
    it after an optimiser adds no arrays to the optimiser state."""
    parts = {name: (optax.set_to_zero() if f == 0 else optax.scale(float(f)))
             for name, f in factors}
    return optax.multi_transform(parts, labels)


def theta1_labels(params):
    """``"theta_1"`` at every array of NODE-EW's weight dynamics g
    (`jaxode.fields.evolving.theta1_mask`), ``"theta_0"`` at every other leaf."""
    from jaxode.fields.evolving import theta1_mask

    return jtu.tree_map(lambda m: "theta_1" if m else "theta_0", theta1_mask(params))


def scale_theta1(factor: float) -> optax.GradientTransformation:
    """theta_1's update times `factor`, theta_0's unchanged: the separate learning
    rate of NODE-EW's weight dynamics (for Adam, lr_theta1 = factor * lr exactly, as
    Adam's update is elementwise and proportional to its rate)."""
    return scale_groups(theta1_labels, (("theta_0", 1.0), ("theta_1", float(factor))))


def with_groups(optimizer: optax.GradientTransformation, config: TrainConfig
                ) -> optax.GradientTransformation:
    """`optimizer` followed by the parameter groups `config` asks for (`g_lr_scale`)."""
    if config.g_lr_scale == 1.0:
        return optimizer
    return _chain(optimizer, scale_theta1(config.g_lr_scale))


@functools.lru_cache(maxsize=64)
def _chain(*parts):
    return optax.chain(*parts)


def freeze_all_but(where: Callable) -> optax.GradientTransformation:
    """Zero the update of every parameter outside ``where(params)`` (e.g.
    ``lambda m: m.head``): a frozen backbone.  Chain it after the optimiser:
    ``optax.chain(optax.sgd(0.01, momentum=0.9), freeze_all_but(lambda m: m.head))``.
    Pass the same `where` object each time to share compiled steps."""
    return scale_groups(_Trained(where), (("frozen", 0.0), ("trained", 1.0)))


class _Trained:
    """Label function: "trained" under ``where(params)``, "frozen" elsewhere; equal
    (and hashing equal) for the same `where`, so `scale_groups`' cache hits."""

    def __init__(self, where):
        self.where = where

    def __call__(self, params):
        labels = jtu.tree_map(lambda _: "frozen", params)
        return eqx.tree_at(self.where, labels,
                           replace_fn=lambda sub: jtu.tree_map(lambda _: "trained", sub))

    def __eq__(self, other):
        return isinstance(other, _Trained) and other.where is self.where

    def __hash__(self):
        return hash(("trained", id(self.where)))
