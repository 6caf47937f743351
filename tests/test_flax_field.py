"""`FlaxField`: a Flax NNX module as an ODE vector field.  The truth is an Equinox field
computing the same function with the same weights: forward values and gradients in the
parameters (default backsolve adjoint) must agree."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

flax_nnx = pytest.importorskip("flax.nnx")

from jaxode import ODEBlock, SolveConfig  # noqa: E402
from jaxode.fields import FlaxField  # noqa: E402
from jaxode.ode import trainable  # noqa: E402

nnx = flax_nnx
D, H = 3, 8


class NNXField(nnx.Module):
    """f(t, z) = W2 tanh(W1 z + t c) + b2 (+ args)."""

    def __init__(self, rngs):
        self.lin1 = nnx.Linear(D, H, rngs=rngs)
        self.lin2 = nnx.Linear(H, D, rngs=rngs)
        self.c = nnx.Param(jax.random.normal(rngs.params(), (H,)))

    def __call__(self, t, z):
        return self.lin2(jnp.tanh(self.lin1(z) + t * self.c[...]))


class NNXFieldArgs(NNXField):
    def __call__(self, t, z, args):
        return super().__call__(t, z) + args


class EqxField(eqx.Module):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    c: jax.Array

    def __call__(self, t, z, args=None):
        out = self.w2 @ jnp.tanh(self.w1 @ z + self.b1 + t * self.c) + self.b2
        return out if args is None else out + args


def _equinox_twin(m):
    """The Equinox field with `m`'s weights (NNX kernels are (in, out): transposed)."""
    return EqxField(m.lin1.kernel[...].T, m.lin1.bias[...], m.lin2.kernel[...].T,
                    m.lin2.bias[...], m.c[...])


def _loss(block, z0, R, args):
    z1, _ = block.batched(z0, args=args)
    return jnp.sum(R * z1)


# The adaptive default (dopri5) once; the args case on a fixed-step solver (cheaper to
# compile; the adjoint is the default backsolve in both).
@pytest.mark.parametrize("with_args,config", [
    (False, SolveConfig()),
    (True, SolveConfig(solver="rk4", num_steps=6)),
])
def test_flax_field_gradients_match_equinox(with_args, config):
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    m = (NNXFieldArgs if with_args else NNXField)(nnx.Rngs(0))
    z0 = jax.random.normal(keys[0], (4, D))
    R = jax.random.normal(keys[1], (4, D))  # fixed random weights: not sum(z1)
    args = 0.3 * jax.random.normal(keys[2], (4, D)) if with_args else None
    flax_block = ODEBlock(FlaxField(m), 0.0, 1.0, config)
    eqx_block = ODEBlock(_equinox_twin(m), 0.0, 1.0, config)
    assert config.adjoint.name == "backsolve"

    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_loss))
    (lf, gf), (le, ge) = (value_and_grad(b, z0, R, args) for b in (flax_block, eqx_block))
    np.testing.assert_allclose(lf, le, rtol=1e-6)
    p = gf.field.params
    pairs = [(p["lin1"]["kernel"][...].T, ge.field.w1), (p["lin1"]["bias"][...], ge.field.b1),
             (p["lin2"]["kernel"][...].T, ge.field.w2), (p["lin2"]["bias"][...], ge.field.b2),
             (p["c"][...], ge.field.c)]
    for got, want in pairs:
        assert float(jnp.max(jnp.abs(want))) > 1e-4  # a gradient that can fail
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_flax_params_are_trainable_and_read_back():
    m = NNXField(nnx.Rngs(1))
    field = FlaxField(m)
    spec = trainable(ODEBlock(field))
    assert all(jax.tree_util.tree_leaves(spec.field.params))
    assert len(jax.tree_util.tree_leaves(field.params)) == 5
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, field.params)
    back = eqx.tree_at(lambda f: f.params, field, doubled).to_module()
    np.testing.assert_allclose(back.lin2.kernel[...], 2 * m.lin2.kernel[...])


def test_flax_field_refuses_what_it_cannot_integrate():
    with pytest.raises(TypeError, match="flax.nnx.Module"):
        FlaxField(lambda t, z: z)

    class WithBatchNorm(nnx.Module):
        def __init__(self):
            self.bn = nnx.BatchNorm(D, rngs=nnx.Rngs(0))

        def __call__(self, t, z):
            return self.bn(z)

    with pytest.raises(ValueError, match="BatchNorm statistics"):
        FlaxField(WithBatchNorm())
    block = ODEBlock(FlaxField(NNXField(nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"written \(t, z\)"):
        block(jnp.ones(D), args=jnp.ones(D))


def test_readme_flax_example_runs(capsys):
    """The README's "Flax fields" example, executed as written."""
    import os
    import re

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme) as f:
        section = f.read().split("## Flax fields", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md#flax-fields", "exec"), scope)
    assert isinstance(scope["trained"], nnx.Module)
    g = scope["grads"].field.params
    assert g["out"]["kernel"][...].shape == (16, 2)
    assert float(jnp.max(jnp.abs(g["out"]["kernel"][...]))) > 0
    assert "kernel" in capsys.readouterr().out
