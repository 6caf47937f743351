"""Small model utilities: parameter counts and rewriting every ODE block's config
(defined in `jaxode.ode._tree`, re-exported here), finiteness checks."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from jaxode.ode import is_ode_block
from jaxode.ode._tree import (count_params, map_solve_configs, ode_blocks, solver_metrics,
                              with_batch_mode, with_solve, with_tolerance)

__all__ = ["count_params", "is_ode_block", "map_solve_configs", "ode_blocks", "solver_metrics",
           "tree_is_finite", "with_batch_mode", "with_solve", "with_solve_config",
           "with_tolerance"]


with_solve_config = with_solve  # the name benchmarks/_campaign_parts.py uses


def tree_is_finite(tree) -> jax.Array:
    leaves = [x for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
