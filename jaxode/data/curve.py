"""The curve of He, Xie, Lin 2019, Sec. 4.1 (Fig. 1), fitted by a neural ODE:

    x(t) = [sin t cos t, sin^2 t + cosh^2 t, e^t],   t in [0, 1],

observed at t_i = i / 100, i = 1..100, from x(0) = [0, 1, 1].
"""

from __future__ import annotations

import jax.numpy as jnp


def target_curve(t):
    """x(t) for a scalar or an array of times (a trailing axis of 3)."""
    return jnp.stack([jnp.sin(t) * jnp.cos(t), jnp.sin(t) ** 2 + jnp.cosh(t) ** 2, jnp.exp(t)], -1)


def curve_data(points: int = 100) -> dict:
    """The fit's batch: ``{"x": x(0), "ts": t_1..t_n, "y": x(t_1..t_n)}``, t_i = i / n."""
    ts = jnp.arange(1, points + 1, dtype=jnp.float32) / points
    return {"x": target_curve(jnp.zeros((), jnp.float32)), "ts": ts, "y": target_curve(ts)}
