"""The conv ODE field and ODEBlock against the PyTorch reference (torchdiffeq).

A torch copy of Chen et al.'s ODE function (GroupNorm -> act -> ConcatConv2d ->
GroupNorm -> act -> ConcatConv2d -> GroupNorm, with t as the FIRST input channel of
each ConcatConv2d) gets the Equinox module's weights.  Then, on a batch of two images,
in float64:

- the fields agree pointwise, with ReLU (the papers' choice) and tanh (round-off);
- `ODEBlock.batched` in joint mode (one solve for the batch, as torchdiffeq does) and
  torchdiffeq's dopri5 `odeint` give the same z(1);
- the parameter gradients of backsolve agree with `odeint_adjoint` and with `odeint`
  (backprop through the solver).

Diffrax and torchdiffeq pick steps differently (Diffrax: PID controller and its own
first step; torchdiffeq: integral controller and Hairer's initial guess), so the two
solutions differ by their discretisation errors, each a small multiple of the
tolerance, not by round-off.  Hence the bounds are K * tol (K = 50 for tanh: both
solutions are within ~12 tol of a tol = 1e-12 reference here).

The solves use tanh.  With ReLU both adjoints stall on the kinks (measured at tol
1e-6: 4159 backward NFE for jaxode's backsolve, 6634 for odeint_adjoint, ~50 s of
torch time) and both solutions lie ~300 tol from the reference, so a ReLU comparison
would be slow and loose without checking anything more about the code.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchdiffeq = pytest.importorskip("torchdiffeq")

from jaxode.fields.conv_odefunc import ConvODEFunc  # noqa: E402
from jaxode.ode import ODEBlock, SolveConfig  # noqa: E402

C, H, W, BATCH = 4, 4, 4, 2
TOL = 1e-6
K = 50
torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared CPU


class TorchConcatConv2d(torch.nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.layer = torch.nn.Conv2d(c_in + 1, c_out, 3, 1, 1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t
        return self.layer(torch.cat([tt, x], 1))  # t is the first channel


class TorchODEFunc(torch.nn.Module):
    def __init__(self, dim, act):
        super().__init__()
        self.act = act
        self.norm1 = torch.nn.GroupNorm(min(32, dim), dim)
        self.conv1 = TorchConcatConv2d(dim, dim)
        self.norm2 = torch.nn.GroupNorm(min(32, dim), dim)
        self.conv2 = TorchConcatConv2d(dim, dim)
        self.norm3 = torch.nn.GroupNorm(min(32, dim), dim)

    def forward(self, t, x):
        out = self.conv1(t, self.act(self.norm1(x)))
        out = self.conv2(t, self.act(self.norm2(out)))
        return self.norm3(out)


def _copy_weights(jfield, tfield):
    def t(x):
        return torch.tensor(np.asarray(x), dtype=torch.float64)

    with torch.no_grad():
        for name in ("norm1", "norm2", "norm3"):
            jn, tn = getattr(jfield, name), getattr(tfield, name)
            tn.weight.copy_(t(jn.weight))
            tn.bias.copy_(t(jn.bias))
        for name in ("conv1", "conv2"):
            jc, tc = getattr(jfield, name).conv, getattr(tfield, name).layer
            tc.weight.copy_(t(jc.weight))
            tc.bias.copy_(t(jc.bias).reshape(-1))


def _torch_grads(tfield):
    """(conv1 weight, conv2 weight, norm3 weight) gradients, as numpy."""
    return [
        tfield.conv1.layer.weight.grad.numpy().copy(),
        tfield.conv2.layer.weight.grad.numpy().copy(),
        tfield.norm3.weight.grad.numpy().copy(),
    ]


@pytest.fixture(scope="module")
def problem(x64):
    jfield = ConvODEFunc(C, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    z0 = jax.random.normal(jax.random.PRNGKey(1), (BATCH, C, H, W), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(2), (BATCH, C, H, W), jnp.float64)
    tfield = TorchODEFunc(C, torch.tanh).double()
    _copy_weights(jfield, tfield)
    block = ODEBlock(jfield, 0.0, 1.0, SolveConfig(rtol=TOL, atol=TOL, batch_mode="joint"))

    @eqx.filter_jit
    def jax_run(block, z0):
        def loss(b):
            z, stats = b.batched(z0)
            return jnp.sum(z * w), (z, stats)

        (_, (z, stats)), g = eqx.filter_value_and_grad(loss, has_aux=True)(block)
        return z, stats, g

    z, stats, g = jax_run(block, z0)
    jax_grads = [
        np.asarray(g.field.conv1.conv.weight),
        np.asarray(g.field.conv2.conv.weight),
        np.asarray(g.field.norm3.weight),
    ]
    return jfield, tfield, np.asarray(z0), np.asarray(w), np.asarray(z), stats, jax_grads


def _torch_solve(tfield, z0, w, adjoint):
    tfield.zero_grad()
    x = torch.tensor(z0)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    z = solve(tfield, x, ts, rtol=TOL, atol=TOL, method="dopri5")[-1]
    (z * torch.tensor(w)).sum().backward()
    return z.detach().numpy(), _torch_grads(tfield)


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_fields_agree_pointwise(problem, act):
    _, _, z0, *_ = problem
    jfield = ConvODEFunc(C, activation=getattr(jax.nn, act), key=jax.random.PRNGKey(5))
    tfield = TorchODEFunc(C, getattr(torch, act)).double()
    _copy_weights(jfield, tfield)
    for t in (0.0, 0.37):
        fj = jax.vmap(lambda z: jfield(jnp.asarray(t), z))(jnp.asarray(z0))
        with torch.no_grad():
            ft = tfield(torch.tensor(t, dtype=torch.float64), torch.tensor(z0)).numpy()
        np.testing.assert_allclose(np.asarray(fj), ft, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
def test_block_matches_torchdiffeq(problem, adjoint):
    _, tfield, z0, w, zj, stats, jax_grads = problem
    zt, torch_grads = _torch_solve(tfield, z0, w, adjoint)
    assert int(stats.steps) > 2
    np.testing.assert_allclose(zj, zt, rtol=K * TOL, atol=K * TOL)
    # The solve is not the identity: the comparison is not vacuous.
    assert np.max(np.abs(zt - z0)) > 0.1
    for gj, gt in zip(jax_grads, torch_grads):
        scale = np.max(np.abs(gt))
        assert scale > 1e-3
        np.testing.assert_allclose(gj, gt, rtol=0, atol=K * TOL * max(1.0, scale))
