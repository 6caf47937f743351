"""Training-time regularisation of the ODE blocks: weighted regularisers and STEER.

- Regularisers (`TrainConfig.regularizers`, e.g. ``{"kinetic": 0.01}``): during the
  training step only, every ODE block of the model computes the named regularisers
  (`jaxode.ode.SolveConfig.regularizers`, e.g. the kinetic energy int ||f||^2 dt of
  Finlay et al., ICML 2020) and the loss becomes

      L = task loss + sum_r weight_r * R_r,

  R_r being what the model reports in its ``aux`` under the regulariser's name (the
  sum over its blocks, averaged over the batch).  A fresh Hutchinson probe key is
  set on each block at every step (folded in from the step's key).  With ``taylor``
  (TayNODE's int ||d^K z/dt^K||^2 dt) every block integrates with K =
  `TrainConfig.taylor_order`.
- STEER (Ghosh, Behl, Dupont, Torr, Namboodiri, "STEER: simple temporal regularization
  for neural ODEs", NeurIPS 2020): at every training step each block's end time is
  drawn as t1' ~ U(t1 - b, t1 + b) (`TrainConfig.steer` = b, which must be smaller
  than |t1 - t0|).  Evaluation always integrates to t1.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.ode import ODEBlock
from jaxode.ode._regularize import REGULARIZERS
from jaxode.train.utils import ode_blocks

# Folded into the step's key, so that the task's own randomness is unchanged.
_PROBE_SALT, _STEER_SALT = 0x5E6, 0x57E


@dataclasses.dataclass(frozen=True)
class Regularization:
    """Hashable (static) form of the trainer's options: `weights` is a sorted tuple of
    (name, weight); `steer` is b or None; `taylor_order` is K of ``taylor``."""

    weights: tuple[tuple[str, float], ...] = ()
    steer: float | None = None
    taylor_order: int = 2

    @classmethod
    def from_config(cls, config) -> Regularization:
        weights = tuple(sorted((str(k), float(v)) for k, v in dict(config.regularizers).items()))
        return cls(weights, None if config.steer is None else float(config.steer),
                   int(getattr(config, "taylor_order", 2)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)

    def __bool__(self):
        return bool(self.weights) or self.steer is not None


def check_weights(weights) -> None:
    """A clear error for unknown names or negative/non-finite weights."""
    for name, w in dict(weights).items():
        if name not in REGULARIZERS:
            raise ValueError(
                f"TrainConfig: unknown regularizer {name!r}; choose from {', '.join(REGULARIZERS)}."
            )
        if not (isinstance(w, (int, float)) and 0 <= w < float("inf")):
            raise ValueError(f"TrainConfig: regularizer weight {name}={w!r} must be a finite number >= 0.")


def _set_probe_key(block: ODEBlock, key) -> ODEBlock:
    return eqx.tree_at(lambda b: b.probe_key, block, key, is_leaf=lambda x: x is None)


def _steer_t1(block: ODEBlock, b: float, key) -> ODEBlock:
    """t1' ~ U(t1 - b, t1 + b) (the interval's direction is kept: b < |t1 - t0|)."""
    span = jnp.abs(block.t1 - block.t0)
    t1 = block.t1 + jax.random.uniform(key, (), block.t1.dtype, -b, b)
    t1 = eqx.error_if(
        t1, b >= span,
        f"STEER: b={b} must be smaller than the length |t1 - t0| of ODE block {block.name!r}.",
    )
    return eqx.tree_at(lambda blk: blk.t1, block, t1)


def for_training(model, reg: Regularization, key):
    """`model` as one training step integrates it: every ODE block computes the
    regularisers `reg.names` (with its own probe key) and, with STEER, ends at a
    random t1.  The parameters are untouched; the trained model is not changed."""
    blocks = ode_blocks(model)
    if not reg or not blocks:
        return model
    new = []
    for i, block in enumerate(blocks):
        k_probe = jax.random.fold_in(jax.random.fold_in(key, _PROBE_SALT), i)
        k_steer = jax.random.fold_in(jax.random.fold_in(key, _STEER_SALT), i)
        if reg.names:
            names = tuple(dict.fromkeys(block.config.regularizers + reg.names))
            order = {"taylor_order": reg.taylor_order} if "taylor" in reg.names else {}
            block = eqx.tree_at(lambda b: b.config, block,
                                block.config.replace(regularizers=names, **order))
            block = _set_probe_key(block, k_probe)
        if reg.steer is not None:
            block = _steer_t1(block, reg.steer, k_steer)
        new.append(block)
    return eqx.tree_at(lambda m: ode_blocks(m), model, new, is_leaf=lambda x: x is None)


def add_to_loss(loss, metrics: dict, reg: Regularization):
    """loss + sum_r weight_r * metrics[r]; a clear error when the task's metrics do not
    report a requested regulariser."""
    for name, weight in reg.weights:
        if name not in metrics:
            raise ValueError(
                f"regularizer {name!r} was requested but the task's training metrics do not "
                f"report it (they have: {', '.join(sorted(metrics))}); the model must put "
                "its ODE blocks' SolveStats values in its aux."
            )
        loss = loss + weight * metrics[name]
    return loss
