"""Generated 2-D densities for the normalizing-flow experiments (He, Xie, Lin 2019,
Sec. 4.3; the toy set of FFJORD, Grathwohl et al. 2019).  No download.

Each sampler is ``sampler(key, n) -> (n, 2) float32`` with its mass roughly inside
[-4, 4]^2 and is a pure function of its JAX PRNG key (same key, same points).
`DENSITIES` is the registry by name; `sample_density(name, key, n)` looks one up.

- ``eight_gaussians``: an equal mixture of 8 isotropic Gaussians (std 0.35) centred on
  a circle of radius 2.83 (4 / sqrt 2).
- ``pinwheel``: 5 arms; a point of arm k has radius r ~ 2 (1 + N(0, 0.3^2)), a
  tangential offset 2 N(0, 0.1^2), and is rotated by 2 pi k / 5 + 0.25 exp(r / 2).
- ``checkerboard``: uniform on the 8 black cells of a 4 x 4 board on [-4, 4]^2.
- ``two_spirals``: two interleaved arms, s = 3 pi sqrt(U) (0 to 540 degrees),
  x = +-(-s cos s, s sin s) / 3 + noise.
- ``moons``: two interleaved half circles (radius 2), noise 0.1 (scaled 2x).
- ``rings``: three concentric circles of radius 1, 2, 3, noise 0.08.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DENSITIES", "sample_density", "density_names", "FreshBatches"]


def eight_gaussians(key, n: int):
    kc, kn = jax.random.split(key)
    angles = jnp.arange(8, dtype=jnp.float32) * (2 * jnp.pi / 8)
    centres = 4.0 / jnp.sqrt(2.0) * jnp.stack([jnp.cos(angles), jnp.sin(angles)], 1)
    which = jax.random.randint(kc, (n,), 0, 8)
    return centres[which] + 0.5 / jnp.sqrt(2.0) * jax.random.normal(kn, (n, 2))


def pinwheel(key, n: int, arms: int = 5, radial_std: float = 0.3,
             tangential_std: float = 0.1, rate: float = 0.25):
    ka, kf = jax.random.split(key)
    arm = jax.random.randint(ka, (n,), 0, arms)
    feat = jax.random.normal(kf, (n, 2)) * jnp.array([radial_std, tangential_std])
    feat = feat.at[:, 0].add(1.0)
    angle = arm.astype(jnp.float32) * (2 * jnp.pi / arms) + rate * jnp.exp(feat[:, 0])
    c, s = jnp.cos(angle), jnp.sin(angle)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (n, 2, 2)
    return 2.0 * jnp.einsum("nij,nj->ni", rot, feat)


def checkerboard(key, n: int):
    ki, kj, ku = jax.random.split(key, 3)
    i = jax.random.randint(ki, (n,), 0, 4)
    j = (jax.random.randint(kj, (n,), 0, 2) * 2 + i % 2) % 4  # (i + j) even
    cell = jnp.stack([i, j], 1).astype(jnp.float32)
    return (cell + jax.random.uniform(ku, (n, 2))) * 2.0 - 4.0


def two_spirals(key, n: int):
    ks, kn, kb, kg = jax.random.split(key, 4)
    s = jnp.sqrt(jax.random.uniform(ks, (n,))) * 3 * jnp.pi
    arm = jnp.stack([-jnp.cos(s) * s, jnp.sin(s) * s], 1) + 0.5 * jax.random.uniform(kn, (n, 2))
    sign = jnp.where(jax.random.bernoulli(kb, 0.5, (n,)), 1.0, -1.0)[:, None]
    return sign * arm / 3.0 + 0.1 * jax.random.normal(kg, (n, 2))


def moons(key, n: int):
    kt, ku, kn = jax.random.split(key, 3)
    theta = jax.random.uniform(kt, (n,), maxval=jnp.pi)
    upper = jax.random.bernoulli(ku, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(theta), 1 - jnp.cos(theta))
    y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
    pts = jnp.stack([x - 0.5, y - 0.25], 1) * 2.0
    return pts + 0.1 * jax.random.normal(kn, (n, 2))


def rings(key, n: int):
    kr, ka, kn = jax.random.split(key, 3)
    radius = jax.random.randint(kr, (n,), 1, 4).astype(jnp.float32)
    angle = jax.random.uniform(ka, (n,), maxval=2 * jnp.pi)
    pts = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], 1)
    return pts + 0.08 * jax.random.normal(kn, (n, 2))


DENSITIES: dict[str, Callable] = {
    "eight_gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "checkerboard": checkerboard,
    "two_spirals": two_spirals,
    "moons": moons,
    "rings": rings,
}

_JITTED = {name: jax.jit(fn, static_argnums=1) for name, fn in DENSITIES.items()}


def density_names() -> tuple[str, ...]:
    return tuple(DENSITIES)


def sample_density(name: str, key, n: int) -> jax.Array:
    """n float32 points of the density `name` (see `DENSITIES`), a function of `key`."""
    if name not in _JITTED:
        raise ValueError(f"unknown density {name!r}; choose one of {', '.join(DENSITIES)}.")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sample_density: n must be a positive integer, got {n!r}.")
    return _JITTED[name](key, int(n)).astype(jnp.float32)


class FreshBatches:
    """`iters` batches ``{"x": (batch, 2)}``, each freshly drawn from the density
    `name` (the paper's training: 100 new points per iteration); the draw of
    iteration i depends only on (seed, i), so a re-run sees the same stream;
    `start` skips to iteration `start` of it (training in chunks sees one stream)."""

    def __init__(self, name: str, iters: int, batch: int, seed: int, start: int = 0):
        self.name, self.iters, self.batch, self.start = name, iters, batch, start
        self.key = jax.random.PRNGKey(seed)

    def __len__(self):
        return self.iters

    def __iter__(self):
        for i in range(self.start, self.start + self.iters):
            k_data, _ = jax.random.split(jax.random.fold_in(self.key, i))
            yield {"x": sample_density(self.name, k_data, self.batch)}
