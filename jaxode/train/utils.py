"""Small model utilities: parameter counts and rewriting every ODE block's config."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from jaxode.ode import ODEBlock, trainable


def _is_block(x) -> bool:
    return isinstance(x, ODEBlock)


def ode_blocks(model) -> list[ODEBlock]:
    """Every `ODEBlock` inside `model`, in PyTree order."""
    return [x for x in jtu.tree_leaves(model, is_leaf=_is_block) if _is_block(x)]


def count_params(model) -> int:
    """Number of trainable scalars (`jaxode.ode.trainable` leaves): the papers' count
    (ODE blocks' t0, t1, tolerances and NFE probe are not parameters)."""
    # works on real models and on `eqx.filter_eval_shape` skeletons (no weights drawn)
    stand_in = jtu.tree_map(
        lambda x: jnp.zeros((), x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, model)
    leaves = jtu.tree_leaves(eqx.filter(model, trainable(stand_in)))
    return int(sum(np.prod(x.shape) for x in leaves))


def _map_configs(model, fn):
    blocks = ode_blocks(model)
    if not blocks:
        return model
    return eqx.tree_at(
        lambda m: [b.config for b in ode_blocks(m)], model, [fn(b.config) for b in blocks]
    )


def with_batch_mode(model, batch_mode: str):
    """`model` with every ODE block solved ``joint`` (one solve per batch) or
    ``per_sample`` (one adaptive solve per example: per-image step counts)."""
    return _map_configs(model, lambda c: c.replace(batch_mode=batch_mode))


def with_tolerance(model, rtol, atol=None):
    """`model` with every ODE block's rtol/atol set (arrays: no recompilation)."""
    atol = rtol if atol is None else atol
    return _map_configs(
        model,
        lambda c: eqx.tree_at(
            lambda k: (k.rtol, k.atol), c,
            (jnp.asarray(rtol, jnp.float32), jnp.asarray(atol, jnp.float32)),
        ),
    )


def with_solve_config(model, **changes):
    """`model` with `SolveConfig.replace(**changes)` applied to every ODE block."""
    return _map_configs(model, lambda c: c.replace(**changes))


def tree_is_finite(tree) -> jax.Array:
    leaves = [x for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
