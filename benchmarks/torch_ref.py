"""PyTorch / torchdiffeq twins of jaxode modules, with weights copied from the
Equinox modules, so that a benchmark or a test can run both frameworks on the same
model with the same parameters.

- `copy_conv2d`, `copy_group_norm`, `copy_linear`: one Equinox layer -> one torch
  layer (weights copied, float32).
- `TorchConcatConv2d`, `TorchConvODEFunc`: the ODE function of Chen et al. (2018)
  (`jaxode.fields.conv_odefunc.ConvODEFunc`) in torch, built ``from_jax``.
- `CountingFunc`: wraps a torch vector field and counts its evaluations (the NFE of
  torchdiffeq's forward and adjoint solves); `torch_nfe` / `reset_nfe` over a model.
- `TorchODEBlock`: a jaxode `ODEBlock` as torchdiffeq ``odeint_adjoint`` (same
  interval, tolerances, solver; ``odeint`` when no gradient is recorded).
- Whole models for `benchmarks.suite`: `TorchODENet` (Chen et al.'s MNIST ODE-Net,
  Carrara et al.'s ODE-only and Res-ODE nets, with `TorchPreActBlock`, `TorchHead`),
  `TorchDCNClassifier` (Tomen et al.'s DCN-ODE; `TorchSRFConv2d` builds its filters
  from its own sigma and alpha with `torch_njet_basis`, the formula of
  `jaxode.nn.srf`, so torch differentiates through the basis as jaxode does),
  `TorchEvolvingBlock` (NODE-EW: ConvODEFunc with elementwise weight dynamics, the
  state (z, theta)), `TorchCNF` (2-D CNF, exact trace by autograd), `TorchSegNode`
  (SegNode: HRNet modules, fusions, bilinear resizes).

tests/test_torch_ports.py checks every twin's forward against jaxode's.

torch is imported lazily by the functions that need it, so importing this module
costs nothing when torch is absent.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "to_torch",
    "copy_conv2d",
    "copy_group_norm",
    "copy_linear",
    "TorchConcatConv2d",
    "TorchConvODEFunc",
    "CountingFunc",
    "torch_nfe",
    "reset_nfe",
    "TorchODEBlock",
    "TorchPreActBlock",
    "copy_layer",
    "copy_sequence",
    "TorchHead",
    "TorchODENet",
    "torch_njet_basis",
    "TorchSRFConv2d",
    "TorchDCNField",
    "TorchDCNClassifier",
    "TorchEvolvingConvODEFunc",
    "TorchEvolvingBlock",
    "TorchConcatMLP",
    "TorchCNFField",
    "TorchCNF",
    "TorchNormActConv",
    "TorchHRModule",
    "TorchMultiResField",
    "TorchSegNode",
]


def to_torch(x):
    """A JAX (or NumPy) array as a float32 torch tensor (a copy)."""
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))


def copy_conv2d(conv):
    """`equinox.nn.Conv2d` -> `torch.nn.Conv2d` with the same weights.  Equinox and
    torch share the (out, in, kh, kw) kernel layout; Equinox's bias is (out, 1, 1)."""
    import torch

    out_c, in_c, kh, kw = conv.weight.shape
    if any(lo != hi for lo, hi in conv.padding):
        raise ValueError(f"copy_conv2d: asymmetric padding {conv.padding} has no torch.nn.Conv2d twin.")
    t = torch.nn.Conv2d(
        in_c * conv.groups, out_c, (kh, kw), stride=tuple(conv.stride),
        padding=tuple(lo for lo, _ in conv.padding), dilation=tuple(conv.dilation),
        groups=conv.groups, bias=conv.use_bias,
    )
    with torch.no_grad():
        t.weight.copy_(to_torch(conv.weight))
        if conv.use_bias:
            t.bias.copy_(to_torch(conv.bias).reshape(-1))
    return t


def copy_group_norm(norm):
    """`equinox.nn.GroupNorm` -> `torch.nn.GroupNorm` (same groups, eps, affine)."""
    import torch

    affine = norm.weight is not None
    t = torch.nn.GroupNorm(norm.groups, norm.channels, eps=norm.eps, affine=affine)
    if affine:
        with torch.no_grad():
            t.weight.copy_(to_torch(norm.weight))
            t.bias.copy_(to_torch(norm.bias))
    return t


def copy_linear(linear):
    """`equinox.nn.Linear` -> `torch.nn.Linear` (both store weight as (out, in))."""
    import torch

    t = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.use_bias)
    with torch.no_grad():
        t.weight.copy_(to_torch(linear.weight))
        if linear.use_bias:
            t.bias.copy_(to_torch(linear.bias))
    return t


def _torch_module_base():
    import torch

    return torch.nn.Module


class TorchConcatConv2d(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.nn.layers.ConcatConv2d`: concatenate a constant t
    channel in front of the input, then convolve (batched, NCHW)."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    @classmethod
    def from_jax(cls, layer):
        return cls(copy_conv2d(layer.conv))

    def forward(self, t, x):
        import torch

        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))


class TorchConvODEFunc(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.conv_odefunc.ConvODEFunc`:
    f(t, z) = GN(ConcatConv(t, act(GN(ConcatConv(t, act(GN(z))))))).
    Only ReLU is supported (the activation of Chen et al. and Carrara et al.)."""

    def __init__(self, norm1, conv1, norm2, conv2, norm3):
        import torch

        super().__init__()
        self.norm1, self.conv1, self.norm2, self.conv2, self.norm3 = norm1, conv1, norm2, conv2, norm3
        self.act = torch.nn.ReLU()

    @classmethod
    def from_jax(cls, func):
        import jax

        if func.activation is not jax.nn.relu:
            raise ValueError(
                f"TorchConvODEFunc supports activation=jax.nn.relu only, got {func.activation!r}."
            )
        return cls(
            copy_group_norm(func.norm1), TorchConcatConv2d.from_jax(func.conv1),
            copy_group_norm(func.norm2), TorchConcatConv2d.from_jax(func.conv2),
            copy_group_norm(func.norm3),
        )

    def forward(self, t, z):
        h = self.conv1(t, self.act(self.norm1(z)))
        h = self.conv2(t, self.act(self.norm2(h)))
        return self.norm3(h)


class CountingFunc(_torch_module_base()):  # type: ignore[misc]
    """Wraps a torch vector field ``f(t, z)`` and counts calls in `nfe`."""

    def __init__(self, func):
        super().__init__()
        self.func = func
        self.nfe = 0

    def forward(self, t, z):
        self.nfe += 1
        return self.func(t, z)


# ----------------------------------------------------------------- whole models
#
# The twins below follow the Equinox modules layer by layer; `from_jax` copies the
# weights.  ODE blocks become `TorchODEBlock` (torchdiffeq ``odeint_adjoint``, the
# continuous adjoint that matches jaxode's default ``backsolve``).


def torch_nfe(module) -> int:
    """Sum of the evaluation counters of every `CountingFunc` inside `module`."""
    return sum(m.nfe for m in module.modules() if isinstance(m, CountingFunc))


def reset_nfe(module) -> None:
    for m in module.modules():
        if isinstance(m, CountingFunc):
            m.nfe = 0


def _torch_method(config, t0: float, t1: float):
    """torchdiffeq's method name and options for a jaxode `SolveConfig`.  torchdiffeq's
    ``rk4`` is the 3/8 rule, not jaxode's classical RK4, so it is refused."""
    if config.solver in ("dopri5", "bosh3"):
        return config.solver, None
    if config.solver in ("euler", "midpoint"):
        step = (t1 - t0) / config.num_steps if config.num_steps is not None else float(config.dt)
        return config.solver, {"step_size": step}
    raise ValueError(f"no torchdiffeq twin for jaxode solver {config.solver!r}.")


class TorchODEBlock(_torch_module_base()):  # type: ignore[misc]
    """z(t1) = odeint(func, z(t0)) with the interval, tolerances and solver of a jaxode
    `ODEBlock`.  `adjoint=True` uses ``odeint_adjoint`` (gradients by the continuous
    adjoint, as jaxode's ``backsolve``); the field is wrapped in a `CountingFunc`.
    `state0(z0)` may extend the input to the solved state (NODE-EW, CNF) and
    `readout(zs)` picks what the block returns."""

    def __init__(self, func, t0, t1, rtol, atol, method="dopri5", options=None, adjoint=True):
        super().__init__()
        self.func = CountingFunc(func)
        self.t0, self.t1, self.rtol, self.atol = float(t0), float(t1), float(rtol), float(atol)
        self.method, self.options, self.adjoint = method, options, adjoint

    @classmethod
    def from_jax(cls, block, func, adjoint=True):
        cfg = block.config
        t0, t1 = float(block.t0), float(block.t1)
        method, options = _torch_method(cfg, t0, t1)
        return cls(func, t0, t1, float(cfg.rtol), float(cfg.atol), method, options, adjoint)

    def solve(self, state0):
        import torch
        from torchdiffeq import odeint, odeint_adjoint

        first = state0[0] if isinstance(state0, tuple) else state0
        ts = torch.tensor([self.t0, self.t1], dtype=first.dtype, device=first.device)
        kw = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        if self.adjoint and torch.is_grad_enabled():
            out = odeint_adjoint(self.func, state0, ts, **kw)
        else:
            out = odeint(self.func, state0, ts, **kw)
        return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]

    def forward(self, z0):
        return self.solve(z0)


def _act(fn):
    """The torch activation of a JAX activation function (ReLU, CELU(1), tanh)."""
    import jax
    import jax.numpy as jnp
    import torch

    if fn is jax.nn.relu:
        return torch.nn.ReLU()
    if fn is jax.nn.celu:
        return torch.nn.CELU(1.0)
    if fn is jnp.tanh or fn is jax.nn.tanh:
        return torch.nn.Tanh()
    raise ValueError(f"no torch twin for activation {fn!r}.")


class TorchPreActBlock(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.models.classifiers.PreActBlock`."""

    def __init__(self, norm1, conv1, norm2, conv2, shortcut):
        import torch

        super().__init__()
        self.norm1, self.conv1, self.norm2, self.conv2 = norm1, conv1, norm2, conv2
        self.shortcut = shortcut
        self.act = torch.nn.ReLU()

    @classmethod
    def from_jax(cls, b):
        return cls(copy_group_norm(b.norm1), copy_conv2d(b.conv1), copy_group_norm(b.norm2),
                   copy_conv2d(b.conv2), None if b.shortcut is None else copy_conv2d(b.shortcut))

    def forward(self, x):
        a = self.act(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return self.conv2(self.act(self.norm2(self.conv1(a)))) + skip


def copy_layer(layer):
    """One layer of a jaxode `Sequence` (Conv2d, GroupNorm, Lambda(relu), PreActBlock)."""
    import equinox as eqx
    import jax

    from jaxode.models.classifiers import PreActBlock, relu

    if isinstance(layer, eqx.nn.Conv2d):
        return copy_conv2d(layer)
    if isinstance(layer, eqx.nn.GroupNorm):
        return copy_group_norm(layer)
    if isinstance(layer, PreActBlock):
        return TorchPreActBlock.from_jax(layer)
    if isinstance(layer, eqx.nn.Lambda) and layer.fn in (relu, jax.nn.relu):
        import torch

        return torch.nn.ReLU()
    raise ValueError(f"copy_layer: no torch twin for {type(layer).__name__}.")


def copy_sequence(seq):
    import torch

    return torch.nn.Sequential(*[copy_layer(layer) for layer in seq.layers])


class TorchHead(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.models.classifiers.Head` (GN -> ReLU -> mean -> linear).
    Dropout is not ported: build the JAX model with dropout 0 (or compare at inference)."""

    def __init__(self, norm, linear):
        import torch

        super().__init__()
        self.norm, self.linear, self.act = norm, linear, torch.nn.ReLU()

    @classmethod
    def from_jax(cls, head):
        if head.dropout > 0:
            raise ValueError("TorchHead: dropout is not ported; build the model with dropout=0.")
        return cls(copy_group_norm(head.norm), copy_linear(head.linear))

    def forward(self, z):
        return self.linear(self.act(self.norm(z)).mean(dim=(-2, -1)))


class TorchODENet(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.models.classifiers.ODENetClassifier` (Chen et al.'s MNIST
    ODE-Net, Carrara et al.'s ODE-only and Res-ODE nets): stem -> ODE block -> head."""

    def __init__(self, stem, ode, head):
        super().__init__()
        self.stem, self.ode, self.head = stem, ode, head

    @classmethod
    def from_jax(cls, model, adjoint=True):
        ode = TorchODEBlock.from_jax(model.ode, TorchConvODEFunc.from_jax(model.ode.field), adjoint)
        return cls(copy_sequence(model.stem), ode, TorchHead.from_jax(model.head))

    def forward(self, x):
        return self.head(self.ode(self.stem(x)))


# ------------------------------------------------------------------- SRF / DCN


def torch_njet_basis(sigma, grid_half_width: int, order: int = 2, truncate: bool = True):
    """The N-jet basis of `jaxode.nn.srf.njet_basis`, computed in torch from sigma by
    the same formula (so torch differentiates it itself): the Gaussian sampled on
    -R..R, taps beyond r(sigma) = ceil(2 sigma + 0.5) zeroed (r without gradient),
    normalised, times the scaled Hermite polynomials; 2-D functions g_l(x) g_k(y).
    Returns (B, 2R+1, 2R+1) for a scalar sigma."""
    import math

    import torch

    from jaxode.nn.srf import basis_orders

    r_grid = int(grid_half_width)
    x = torch.arange(-r_grid, r_grid + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma.reshape(-1)[:, None] if sigma.ndim else sigma.reshape(1, 1)
    g = torch.exp(-(x * x) / (2.0 * s * s))
    if truncate:
        r = torch.ceil(2.0 * s.detach() + 0.5)
        g = torch.where(x.abs() <= r, g, torch.zeros_like(g))
    g = g / g.sum(dim=-1, keepdim=True)
    u = x / (math.sqrt(2.0) * s)
    hermite = [torch.ones_like(u), 2.0 * u]
    for m in range(1, order):
        hermite.append(2.0 * u * hermite[m] - 2.0 * m * hermite[m - 1])
    g1 = [(-1.0 / math.sqrt(2.0)) ** n * hermite[n] * g for n in range(order + 1)]
    basis = torch.stack([g1[k][..., :, None] * g1[l][..., None, :] for l, k in basis_orders(order)])
    return basis[:, 0] if not sigma.ndim else basis


class TorchSRFConv2d(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.nn.srf.SRFConv2d` (one sigma = 2^scale per layer, masked
    support on a grid of half-width `grid_half_width`, "same" padding, no bias): the
    parameters are alpha and scale, and the filters are built from them at every call."""

    def __init__(self, alpha, scale, grid_half_width, order, stride, time_channel):
        import torch

        super().__init__()
        self.alpha = torch.nn.Parameter(to_torch(alpha))
        self.scale = torch.nn.Parameter(to_torch(scale))
        self.grid, self.order, self.stride = int(grid_half_width), int(order), int(stride)
        self.time_channel = bool(time_channel)

    @classmethod
    def from_jax(cls, layer):
        from jaxode.nn.srf import SRFConv2d

        if type(layer) is not SRFConv2d or layer.support != "masked":
            raise ValueError(f"TorchSRFConv2d ports SRFConv2d with masked support, got "
                             f"{type(layer).__name__} ({getattr(layer, 'support', '?')}).")
        return cls(layer.alpha, layer.scale, layer.grid_half_width, layer.order, layer.stride,
                   layer.time_channel)

    def filters(self):
        import torch

        basis = torch_njet_basis(2.0 ** self.scale, self.grid, self.order)
        return torch.einsum("bio,byx->oiyx", self.alpha, basis)

    def forward(self, *args):
        import torch

        t, x = (None, args[0]) if len(args) == 1 else args
        if self.time_channel:
            x = torch.cat([torch.ones_like(x[:, :1]) * t, x], 1)
        return torch.nn.functional.conv2d(x, self.filters(), stride=self.stride, padding=self.grid)


class TorchDCNField(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.dcn.DCNField` with shared-sigma SRF convolutions:
    f(t, h) = GN(K2(t, act(GN(K1(t, act(GN(h)))))))."""

    def __init__(self, norm1, conv1, norm2, conv2, norm3, act):
        super().__init__()
        self.norm1, self.conv1, self.norm2, self.conv2, self.norm3 = norm1, conv1, norm2, conv2, norm3
        self.act = act

    @classmethod
    def from_jax(cls, f):
        return cls(copy_group_norm(f.norm1), TorchSRFConv2d.from_jax(f.conv1),
                   copy_group_norm(f.norm2), TorchSRFConv2d.from_jax(f.conv2),
                   copy_group_norm(f.norm3), _act(f.activation))

    def forward(self, t, h):
        z = self.conv1(t, self.act(self.norm1(h)))
        z = self.conv2(t, self.act(self.norm2(z)))
        return self.norm3(z)


class TorchDCNClassifier(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.models.dcn.DCNClassifier` for the ODE models with a plain
    or SRF stem / down-sampling and `DCNField` (shared sigma) or `ConvODEFunc` blocks
    (``dcn_ode``, ``dcn_full``, ``odenet``)."""

    def __init__(self, stem, blocks, downs, head_norm, head, act):
        import torch

        super().__init__()
        self.stem = stem
        self.blocks = torch.nn.ModuleList(blocks)
        self.downs = torch.nn.ModuleList(downs)
        self.head_norm, self.head, self.act = head_norm, head, act

    @classmethod
    def from_jax(cls, model, adjoint=True):
        import equinox as eqx
        import torch

        from jaxode.fields.conv_odefunc import ConvODEFunc
        from jaxode.fields.dcn import DCNField
        from jaxode.ode import ODEBlock

        def conv(layer):
            return copy_conv2d(layer) if isinstance(layer, eqx.nn.Conv2d) else TorchSRFConv2d.from_jax(layer)

        blocks = []
        for b in model.blocks:
            if not isinstance(b, ODEBlock):
                raise ValueError("TorchDCNClassifier ports the ODE models only.")
            if isinstance(b.field, DCNField):
                f = TorchDCNField.from_jax(b.field)
            elif isinstance(b.field, ConvODEFunc) and b.field.activation is not None:
                f = TorchConvODEFunc.from_jax(b.field)
            else:
                raise ValueError(f"no torch twin for field {type(b.field).__name__}.")
            blocks.append(TorchODEBlock.from_jax(b, f, adjoint))
        act = _act(model.activation)
        downs = [torch.nn.Sequential(copy_group_norm(d.norm), _act(d.activation), conv(d.conv))
                 for d in model.downs]
        return cls(conv(model.stem), blocks, downs, copy_group_norm(model.head_norm),
                   copy_linear(model.head), act)

    def forward(self, x):
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return self.head(self.act(self.head_norm(h)).mean(dim=(2, 3)))


# ------------------------------------------------------------------------ NODE-EW


_CONV_ODEFUNC_LEAVES = ("norm1.weight", "norm1.bias", "conv1.conv.weight", "conv1.conv.bias",
                        "norm2.weight", "norm2.bias", "conv2.conv.weight", "conv2.conv.bias",
                        "norm3.weight", "norm3.bias")


class TorchEvolvingConvODEFunc(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.evolving.EvolvingField` over a `ConvODEFunc` (all
    its arrays evolving) with `ElementwiseDynamics`: the state is the tuple
    (z, theta_1, ..., theta_10) and the field returns (f(t, z; theta), g(t, theta)),

        g_i = sum_k v_lk tanh(u_lk theta_i + w_lk t + b_lk) + c_l  (tensor l of theta).

    The parameters of this module are theta_1 = (u, w, b, v, c); theta_0 is the
    initial state (see `TorchEvolvingBlock`)."""

    def __init__(self, u, w, b, v, c, groups, eps):
        import torch

        super().__init__()
        P = torch.nn.Parameter
        self.u, self.w, self.b, self.v, self.c = (P(to_torch(a)) for a in (u, w, b, v, c))
        self.groups, self.eps = groups, eps

    def forward(self, t, state):
        import torch
        import torch.nn.functional as F

        z, *theta = state
        p = dict(zip(_CONV_ODEFUNC_LEAVES, theta))

        def cconv(h, name):
            h = torch.cat([torch.ones_like(h[:, :1]) * t, h], 1)
            return F.conv2d(h, p[f"{name}.conv.weight"], p[f"{name}.conv.bias"].reshape(-1), padding=1)

        def gn(h, name):
            return F.group_norm(h, self.groups, p[f"{name}.weight"], p[f"{name}.bias"], self.eps)

        h = cconv(torch.relu(gn(z, "norm1")), "conv1")
        h = cconv(torch.relu(gn(h, "norm2")), "conv2")
        dz = gn(h, "norm3")
        g = [torch.tanh(x[..., None] * self.u[i] + t * self.w[i] + self.b[i]) @ self.v[i] + self.c[i]
             for i, x in enumerate(theta)]
        return (dz, *g)


class TorchEvolvingBlock(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.evolving.EvolvingODE` (joint batch mode): theta_0
    are parameters of this module and enter the solve as part of the initial state
    (z0, theta_0); returns z(t1)."""

    def __init__(self, theta0, ode):
        import torch

        super().__init__()
        self.theta0 = torch.nn.ParameterList([torch.nn.Parameter(to_torch(x)) for x in theta0])
        self.ode = ode

    @classmethod
    def from_jax(cls, evolving, adjoint=True):
        import jax.tree_util as jtu

        from jaxode.fields.conv_odefunc import ConvODEFunc
        from jaxode.fields.evolving import ElementwiseDynamics

        base = evolving.fixed_field()
        g = evolving.g
        if not isinstance(base, ConvODEFunc) or not isinstance(g, ElementwiseDynamics):
            raise ValueError("TorchEvolvingBlock ports a ConvODEFunc with ElementwiseDynamics only.")
        th = evolving.theta0
        leaves = jtu.tree_leaves(th)
        expected = [th.norm1.weight, th.norm1.bias, th.conv1.conv.weight, th.conv1.conv.bias,
                    th.norm2.weight, th.norm2.bias, th.conv2.conv.weight, th.conv2.conv.bias,
                    th.norm3.weight, th.norm3.bias]
        if len(leaves) != len(expected) or any(a is not b for a, b in zip(leaves, expected)):
            raise ValueError("TorchEvolvingBlock: every array of the ConvODEFunc must evolve.")
        if base.activation is not __import__("jax").nn.relu:
            raise ValueError("TorchEvolvingBlock supports the ReLU ConvODEFunc only.")
        func = TorchEvolvingConvODEFunc(g.u, g.w, g.b, g.v, g.c, base.norm1.groups, base.norm1.eps)
        return cls(leaves, TorchODEBlock.from_jax(evolving.block, func, adjoint))

    def forward(self, z0):
        return self.ode.solve((z0, *self.theta0))[0]


# --------------------------------------------------------------------------- CNF


class TorchConcatMLP(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.cnf.ConcatMLP` (batched): L_i(t, h) = W_i [h; t] + b_i."""

    def __init__(self, layers, act):
        import torch

        super().__init__()
        self.layers = torch.nn.ModuleList(layers)
        self.act = act

    @classmethod
    def from_jax(cls, mlp):
        return cls([copy_linear(layer) for layer in mlp.layers], _act(mlp.activation))

    def forward(self, t, z):
        import torch

        tt = torch.ones_like(z[:, :1]) * t
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(torch.cat([h, tt], 1))
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class TorchCNFField(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.cnf.CNFField` with the exact trace (batched):
    (z, delta) -> (f(t, z), -tr(df/dz)), the trace from D autograd passes (FFJORD's
    exact divergence); graphs are kept only when the caller records gradients (the
    adjoint's backward solve)."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, t, state):
        import torch

        z = state[0]
        create = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            dz = self.field(t, z)
            tr = 0.0
            for i in range(z.shape[1]):
                tr = tr + torch.autograd.grad(dz[:, i].sum(), z, create_graph=create,
                                              retain_graph=True)[0][:, i]
        if not create:
            dz, tr = dz.detach(), tr.detach()
        return dz, -tr


class TorchCNF(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.cnf.CNF` over an `ODEBlock` of a `CNFField` with
    the exact trace: ``forward(x)`` = log p(x) = log N(z(t1); 0, I) - delta(t1)."""

    def __init__(self, ode):
        super().__init__()
        self.ode = ode

    @classmethod
    def from_jax(cls, cnf, adjoint=True):
        if cnf.evolving or cnf.trace != "exact":
            raise ValueError("TorchCNF ports the fixed-weight, exact-trace CNF only.")
        func = TorchCNFField(TorchConcatMLP.from_jax(cnf.ode.field.field))
        return cls(TorchODEBlock.from_jax(cnf.ode, func, adjoint))

    def forward(self, x):
        import math

        import torch

        z, delta = self.ode.solve((x, torch.zeros_like(x[:, 0])))
        d = z.shape[1]
        return -0.5 * (z**2).sum(1) - 0.5 * d * math.log(2 * math.pi) - delta


# ------------------------------------------------------------------------ SegNode


def _resize(x, hw):
    """Bilinear resize with half-pixel centres (`jaxode.nn.hrnet.resize_bilinear`):
    torch's ``align_corners=False`` rule; the identity when the size matches."""
    import torch

    hw = tuple(int(s) for s in hw)
    if tuple(x.shape[-2:]) == hw:
        return x
    return torch.nn.functional.interpolate(x, size=hw, mode="bilinear", align_corners=False)


class TorchNormActConv(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.nn.hrnet.NormActConv`: conv(ReLU(GN(x))), with t as the
    first input channel when built `with_time`."""

    def __init__(self, norm, conv, with_time):
        super().__init__()
        self.norm, self.conv, self.with_time = norm, conv, with_time

    @classmethod
    def from_jax(cls, u):
        conv = TorchConcatConv2d.from_jax(u.conv) if u.with_time else copy_conv2d(u.conv)
        return cls(copy_group_norm(u.norm), conv, u.with_time)

    def forward(self, x, t=None):
        import torch

        h = torch.relu(self.norm(x))
        return self.conv(t, h) if self.with_time else self.conv(h)


class TorchHRModule(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.nn.hrnet.HRModule` (batched): branches of basic residual
    blocks, then M(z)_i = b_i + sum_{j != i} F_ij(b_j)."""

    def __init__(self, branches, fuse, n):
        import torch

        super().__init__()
        self.branches = torch.nn.ModuleList(
            [torch.nn.ModuleList([torch.nn.ModuleList(pair) for pair in br]) for br in branches])
        self.fuse = torch.nn.ModuleDict(
            {f"{i}_{j}": torch.nn.ModuleList(units) for (i, j), units in fuse.items()})
        self.n = n

    @classmethod
    def from_jax(cls, m):
        from jaxode.nn.hrnet import FuseUp

        branches = [[(TorchNormActConv.from_jax(b.unit1), TorchNormActConv.from_jax(b.unit2))
                     for b in br] for br in m.branches]
        fuse = {}
        for i, row in enumerate(m.fuse):
            for j, f in enumerate(row):
                if f is None:
                    continue
                units = [f.unit] if isinstance(f, FuseUp) else list(f.units)
                fuse[(i, j)] = [TorchNormActConv.from_jax(u) for u in units]
        return cls(branches, fuse, len(m.branches))

    def forward(self, z, t=None):
        b = []
        for x, blocks in zip(z, self.branches):
            for u1, u2 in blocks:
                x = x + u2(u1(x, t), t)
            b.append(x)
        out = []
        for i in range(self.n):
            y = b[i]
            for j in range(self.n):
                if j == i:
                    continue
                h = b[j]
                for unit in self.fuse[f"{i}_{j}"]:
                    h = unit(h)
                y = y + (_resize(h, b[i].shape[-2:]) if j > i else h)
            out.append(y)
        return tuple(out)


class TorchMultiResField(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.fields.multires.MultiResField`: f(t, z) = M_n(...M_1(z)) - z."""

    def __init__(self, modules, with_time):
        import torch

        super().__init__()
        self.mods = torch.nn.ModuleList(modules)
        self.with_time = with_time

    @classmethod
    def from_jax(cls, f):
        return cls([TorchHRModule.from_jax(m) for m in f.modules], [m.with_time for m in f.modules])

    def forward(self, t, z):
        h = tuple(z)
        for m, wt in zip(self.mods, self.with_time):
            h = m(h, t if wt else None)
        return tuple(a - b for a, b in zip(h, z))


class TorchSegNode(_torch_module_base()):  # type: ignore[misc]
    """torch twin of `jaxode.models.segnode.SegNode` (batched): stem -> transition ->
    ODE on the four-branch state -> head (per-branch scores, summed, up-sampled)."""

    def __init__(self, stem, transition, ode, head):
        import torch

        super().__init__()
        self.stem = stem
        self.transition = torch.nn.ModuleList(transition)
        self.ode = ode
        self.head = torch.nn.ModuleList(head)

    @classmethod
    def from_jax(cls, model, adjoint=True):
        stem = torch_sequential(copy_conv2d(model.stem.conv1), TorchNormActConv.from_jax(model.stem.unit2))
        transition = [TorchNormActConv.from_jax(u) for u in model.transition.units]
        ode = TorchODEBlock.from_jax(model.ode, TorchMultiResField.from_jax(model.ode.field), adjoint)
        head = [TorchNormActConv.from_jax(u) for u in model.head.units]
        return cls(stem, transition, ode, head)

    def forward(self, x):
        s = self.stem(x)
        zs = [self.transition[0](s)]
        for unit in self.transition[1:]:
            zs.append(unit(zs[-1]))
        z = self.ode.solve(tuple(zs))
        hw = z[0].shape[-2:]
        y = sum(_resize(unit(zk), hw) for unit, zk in zip(self.head, z))
        return _resize(y, x.shape[-2:])


def torch_sequential(*layers):
    import torch

    return torch.nn.Sequential(*layers)
