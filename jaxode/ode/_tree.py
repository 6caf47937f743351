"""Model-level helpers over the ODE blocks inside a model: find them, count the
trained parameters, and change how every block is solved (the weights are shared).

They live in the ODE core so that every layer above (fields, models, train,
experiments) uses the same ones.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from jaxode.ode._block import ODEBlock, is_ode_block, trainable


def ode_blocks(model) -> list[ODEBlock]:
    """Every `ODEBlock` inside `model`, in PyTree order."""
    return [x for x in jtu.tree_leaves(model, is_leaf=is_ode_block) if is_ode_block(x)]


def count_params(model) -> int:
    """Number of trainable scalars (`jaxode.ode.trainable` leaves): the papers' count
    (ODE blocks' t0, t1, tolerances and NFE probe are not parameters)."""
    # works on real models and on `eqx.filter_eval_shape` skeletons (no weights drawn)
    stand_in = jtu.tree_map(
        lambda x: jnp.zeros((), x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, model)
    leaves = jtu.tree_leaves(eqx.filter(model, trainable(stand_in)))
    return int(sum(np.prod(x.shape) for x in leaves))


def map_solve_configs(model, fn):
    """`model` with every ODE block's `SolveConfig` c replaced by ``fn(c)``."""
    blocks = ode_blocks(model)
    if not blocks:
        return model
    return eqx.tree_at(
        lambda m: [b.config for b in ode_blocks(m)], model, [fn(b.config) for b in blocks]
    )


_TOLERANCES = ("rtol", "atol")


def with_solve(model, config=None, **changes):
    """`model` with every ODE block solved differently; the weights are shared.

    `config`: a `SolveConfig` for every block; `changes`: fields of each block's own
    config to change (``with_solve(m, solver="euler", num_steps=2)``).  `rtol` and
    `atol` are stored as float32 arrays, so a jitted function compiled for one
    tolerance runs every other one without recompiling."""
    if config is not None and changes:
        raise ValueError("with_solve: pass either a SolveConfig or field changes, not both.")
    if config is not None:
        return map_solve_configs(model, lambda c: config)
    tols = {k: jnp.asarray(changes.pop(k), jnp.float32) for k in _TOLERANCES if k in changes}

    def change(c):
        c = c.replace(**changes) if changes else c
        if tols:
            c = eqx.tree_at(lambda k: [getattr(k, n) for n in tols], c, list(tols.values()))
        return c

    return map_solve_configs(model, change)


def with_batch_mode(model, batch_mode: str):
    """`model` with every ODE block solved ``joint`` (one solve per batch) or
    ``per_sample`` (one adaptive solve per example: per-image step counts)."""
    return with_solve(model, batch_mode=batch_mode)


def with_tolerance(model, rtol, atol=None):
    """`model` with every ODE block's rtol/atol set (arrays: no recompilation)."""
    return with_solve(model, rtol=rtol, atol=rtol if atol is None else atol)


def solver_metrics(stats, n: int | None = None) -> dict:
    """``{"nfe", "steps"}`` of a forward solve as float32 metrics: from a `SolveStats`
    or a model's aux dict (missing: zeros); with `n`, broadcast to per-example (n,)
    arrays, else batch means (scalars)."""
    out = {}
    for name in ("nfe", "steps"):
        v = stats.get(name) if isinstance(stats, dict) else getattr(stats, name, None)
        v = jnp.zeros((), jnp.float32) if v is None else jnp.asarray(v, jnp.float32)
        out[name] = jnp.mean(v) if n is None else jnp.broadcast_to(v, (n,))
    return out
