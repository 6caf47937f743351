"""The torch twins of `benchmarks/torch_ref.py` compute what the jaxode models compute.

Each port gets the Equinox model's weights and the same input; with the same
fixed-step solver in both libraries (midpoint, 4 steps: torchdiffeq's and Diffrax's
midpoint rules are the same discretisation, unlike their adaptive step controllers)
the outputs must agree to float32 round-off (rtol 1e-4).  This is the check that the
suite's torchdiffeq rows time the same model.

`test_chen_block` runs jaxode's own `ODEBlock` (Diffrax).  The model tests replace
every `ODEBlock` of the JAX model by `_Unrolled`, the same block whose solve is the
midpoint rule written out (one step, no Diffrax), so that the rest of the model's own
code (stems, fields, heads, NODE-EW's joint state, the CNF's trace) runs unchanged
while each test compiles in about a second instead of ten (Diffrax's midpoint
equals the written-out rule: tests/test_ode_accuracy.py).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from benchmarks import torch_ref  # noqa: E402
from jaxode.ode import ODEBlock, SolveConfig, SolveStats  # noqa: E402

torch.set_num_threads(1)
FIXED = SolveConfig(solver="midpoint", num_steps=4)
ONE_STEP = SolveConfig(solver="midpoint", num_steps=1)  # for the written-out solves
RTOL, ATOL = 1e-4, 1e-5


def _np(x):
    return np.asarray(x, np.float32)


def assert_torch_equals_jax(torch_out, jax_out):
    np.testing.assert_allclose(torch_out.detach().numpy(), _np(jax_out), rtol=RTOL, atol=ATOL)


class _Unrolled(ODEBlock):
    """An `ODEBlock` whose solve is `config.num_steps` explicit midpoint steps, written out."""

    def _solve(self, z0, ts, args, key, joint_batch, args_batched):
        assert ts is None and args is None and key is None
        f = (lambda t, z: jax.vmap(self.field, in_axes=(None, 0))(t, z)) if joint_batch else self.field
        add = lambda a, b, c: jax.tree_util.tree_map(lambda x, y: x + c * y, a, b)  # noqa: E731
        n = self.config.num_steps
        h = (self.t1 - self.t0) / n
        t, z = self.t0, z0
        for _ in range(n):
            z = add(z, f(t + h / 2, add(z, f(t, z), h / 2)), h)
            t = t + h
        steps = jnp.asarray(n, jnp.int32)
        return z, SolveStats(steps, steps, 0 * steps, 2 * steps, max_steps_reached=jnp.asarray(False),
                             nonfinite=jnp.asarray(False), nfe_spent=2 * steps)


def _unrolled(model):
    def swap(b):
        return _Unrolled(b.field, b.t0, b.t1, b.config, name=b.name) if isinstance(b, ODEBlock) else b

    return jax.tree_util.tree_map(swap, model, is_leaf=lambda x: isinstance(x, ODEBlock))


_BLOCK_VALUES = {"t0": 0.0, "rtol": 1e-3, "atol": 1e-3, "nfe_probe": 0.0}


def _build(make, seed, t1=1.0):
    """`make(key)` with its arrays drawn here by NumPy (shapes from
    `eqx.filter_eval_shape`, so no random-number program is compiled: JAX's own
    initialisation costs 5-20 s of compilation per model on this CPU).  Matrices and
    kernels ~ N(0, 1/fan_in), vectors 1 + N(0, 0.01), scalars N(0, 0.09); the ODE
    blocks' t0, t1, tolerances and NFE probe get their usual values."""
    abstract = eqx.filter_eval_shape(make, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        if not isinstance(x, jax.ShapeDtypeStruct):
            return x
        name = getattr(path[-1], "name", None)
        if name == "t1":
            return jnp.asarray(t1, x.dtype)
        if name in _BLOCK_VALUES:
            return jnp.asarray(_BLOCK_VALUES[name], x.dtype)
        shape = x.shape
        if len(shape) >= 2:
            v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        elif len(shape) == 1:
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            v = 0.3 * rng.standard_normal()
        return jnp.asarray(v, x.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _input(shape, seed=0):
    return _np(np.random.default_rng(seed).standard_normal(shape))


def test_chen_block():
    from jaxode.fields.conv_odefunc import ConvODEFunc

    block = _build(lambda k: ODEBlock(ConvODEFunc(8, key=k), 0.0, 1.0, FIXED), 1)
    z0 = _input((2, 8, 5, 5))
    want, _ = eqx.filter_jit(lambda b, z: b.batched(z))(block, jnp.asarray(z0))
    tb = torch_ref.TorchODEBlock.from_jax(block, torch_ref.TorchConvODEFunc.from_jax(block.field))
    assert_torch_equals_jax(tb(torch.from_numpy(z0)), want)
    assert torch_ref.torch_nfe(tb) == 4 * 2  # midpoint: two evaluations per step


@pytest.mark.parametrize("name", ["chen-odenet", "carrara-odeonly", "carrara-resode"])
def test_classifiers(name):
    from jaxode.models.classifiers import make_model

    in_c, size = (1, 28) if name == "chen-odenet" else (3, 16)
    model = _build(lambda k: make_model(name, channels=8, dropout=0.0, solve=ONE_STEP, key=k,
                                        in_channels=in_c), 2)
    x = _input((2, in_c, size, size), 3)
    want = eqx.filter_jit(lambda m, x: m(x, inference=True)[0])(_unrolled(model), jnp.asarray(x))
    got = torch_ref.TorchODENet.from_jax(model)(torch.from_numpy(x))
    assert got.shape == want.shape == (2, 10)  # ten class scores per image
    assert_torch_equals_jax(got, want)


def test_srf_basis_and_dcn():
    from jaxode.models.dcn import DCNClassifier
    from jaxode.nn.srf import refresh_support
    from jaxode.nn.srf import njet_basis

    sigma = 1.3
    np.testing.assert_allclose(
        torch_ref.torch_njet_basis(torch.tensor(sigma), 4).numpy(), _np(njet_basis(sigma, 4)),
        rtol=1e-5, atol=1e-7)
    model = _build(lambda k: DCNClassifier("dcn_ode", (8, 8, 8), config=ONE_STEP, key=k), 4, t1=2.0)
    model = refresh_support(model, "exact")
    x = _input((2, 3, 16, 16), 5)
    want = eqx.filter_jit(lambda m, x: m(x)[0])(_unrolled(model), jnp.asarray(x))
    tm = torch_ref.TorchDCNClassifier.from_jax(model)
    assert_torch_equals_jax(tm(torch.from_numpy(x)), want)
    # the torch model's filters are functions of its own sigma: they carry a gradient
    tm(torch.from_numpy(x)).sum().backward()
    assert tm.blocks[0].func.func.conv1.scale.grad is not None


def test_node_ew_block():
    from jaxode.fields.conv_odefunc import ConvODEFunc
    from jaxode.fields.evolving import EvolvingODE

    ode = _build(lambda k: EvolvingODE(ConvODEFunc(8, key=k), "elementwise", 0.0, 1.0, ONE_STEP,
                                       key=k, hidden=4), 6)
    z0 = _input((2, 8, 4, 4), 8)
    (want, theta1), _ = eqx.filter_jit(lambda o, z: o.batched(z))(_unrolled(ode), jnp.asarray(z0))
    # non-trivial weight dynamics: theta moved
    assert float(jnp.max(jnp.abs(theta1.conv1.conv.weight - ode.theta0.conv1.conv.weight))) > 1e-2
    assert_torch_equals_jax(torch_ref.TorchEvolvingBlock.from_jax(ode)(torch.from_numpy(z0)), want)


def test_cnf():
    from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
    cnf = _build(lambda k: CNF(ODEBlock(CNFField(ConcatMLP(2, 8, 2, key=k)), 0.0, 1.0, ONE_STEP)), 9)
    x = _input((5, 2), 10)
    want, _ = eqx.filter_jit(lambda c, x: c.log_prob_batched(x))(_unrolled(cnf), jnp.asarray(x))
    got = torch_ref.TorchCNF.from_jax(cnf)(torch.from_numpy(x))
    assert got.shape == want.shape == (5,)  # one log-density per point
    assert_torch_equals_jax(got, want)


def test_segnode():
    from jaxode.models.segnode import SegNode, SegNodeConfig, solve_config

    cfg = SegNodeConfig(num_classes=3, widths=(4, 8, 8, 8), blocks=1, stem_channels=8,
                        solve=solve_config(solver="midpoint", num_steps=1))
    model = _build(lambda k: SegNode(cfg, key=k), 11)
    x = _input((2, 3, 20, 20), 12)  # 20 -> 5, 3, 2, 1: odd sizes exercise the resizes
    want, _ = eqx.filter_jit(lambda m, x: m.batched(x))(_unrolled(model), jnp.asarray(x))
    got = torch_ref.TorchSegNode.from_jax(model)(torch.from_numpy(x))
    assert got.shape == (2, 3, 20, 20)
    assert_torch_equals_jax(got, want)
