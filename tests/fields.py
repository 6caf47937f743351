"""Linear test fields shared by the ODE-core tests: their flows have closed forms.

- `ScalarLinear`: dz/dt = a z, so z(t) = z0 e^{a t} (elementwise for an array z).
- `MatrixLinear`: dz/dt = A z, so z(t) = expm(t A) z0.
"""

import equinox as eqx
import jax


class ScalarLinear(eqx.Module):
    """f(t, z) = a z."""

    a: jax.Array

    def __call__(self, t, z):
        return self.a * z


class MatrixLinear(eqx.Module):
    """f(t, z) = A z."""

    A: jax.Array

    def __call__(self, t, z):
        return self.A @ z
