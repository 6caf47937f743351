"""SegNode and its residual baseline (Khoshsirat & Kambhamettu, "Semantic Segmentation
using Neural Ordinary Differential Equations", Sec. 3, Fig. 1-2).

Both networks share the stem (two stride-2 3x3 convs to 1/4 resolution), the
convolutions that make the four branch tensors z(0) = (z_1, ..., z_4), and the head
(per-branch 1x1 convs to class scores, bilinear up-sampling, sum).  They differ only in
the main body:

- `HRResidualNet` (the baseline, Sec. 3.1, Fig. 2): K HRNetV2 modules in series, each a
  residual unit, h_{k+1} = h_k + R_k(h_k), with its own weights (K = 6 in Sec. 3.1).
- `SegNode` (Sec. 3.2, Fig. 1): one ODE dz/dt = f(t, z) on the tuple of four maps,
  f = `jaxode.fields.multires.MultiResField`, integrated on [0, 1] with dopri5 and the
  backsolve adjoint (the paper uses torchdiffeq's Runge-Kutta solver with the adjoint).

Each model's `__call__` takes one image (3, H, W) and returns class scores
(num_classes, H, W); `batched` takes (B, 3, H, W).  SegNode's `batched` integrates the
batch jointly or per sample, as its `SolveConfig.batch_mode` says, and can return the
scores along the trajectory (Fig. 3-4) when given times `ts`.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxode.fields.multires import MultiResField
from jaxode.nn.hrnet import PAPER_WIDTHS, STEM_CHANNELS, HRModule, SegHead, Stem, Transition
from jaxode.ode import ODEBlock, SolveConfig
from jaxode.ode._tree import count_params  # noqa: F401  (the models' parameter count)

__all__ = ["SegNode", "HRResidualNet", "SegNodeConfig", "BaselineConfig", "build_model",
           "count_params", "with_solve", "solve_config", "PAPER_PARAMS"]

# Table 2 of the paper, in parameters.
PAPER_PARAMS = {"baseline": 70.9e6, "segnode": 20.9e6, "hrnetv2": 65.8e6}


def _check_image(name: str, x, in_channels: int) -> None:
    if not hasattr(x, "ndim") or x.ndim != 3 or x.shape[0] != in_channels:
        raise ValueError(
            f"{name}: expected one image of shape ({in_channels}, H, W), got "
            f"{getattr(x, 'shape', type(x).__name__)}; use .batched for (B, C, H, W)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: the image must be floating point, got {x.dtype}; normalise uint8 "
            "images first (jaxode.data.camvid.normalize)."
        )


def solve_config(**settings) -> SolveConfig:
    """SegNode's `SolveConfig`: `settings` (``solver``, ``rtol``, ...) over its defaults,
    which differ from `SolveConfig`'s only in the step budget (256 steps)."""
    return SolveConfig(**{"max_steps": 256, **settings})


@dataclasses.dataclass(frozen=True)
class SegNodeConfig:
    """SegNode hyper-parameters; defaults are the paper's widths.

    Normalisation: every GroupNorm (stem, transition, branch blocks, fusions, head)
    has the largest divisor of its channels that is at most `max_groups` as group
    count (``GroupRule("divisor", max_groups)``; 24 for 48 channels, 32 for 96, 192,
    384).  Ours: the paper uses batch normalisation (Fig. 2 caption); see
    `jaxode.nn.hrnet` for why the field cannot.

    `solve` integrates dz/dt = f(t, z) on [0, `t1`]: by default dopri5 at rtol = atol
    = 1e-3 with the backsolve adjoint, the whole batch in one solve, at most 256 steps.
    """

    num_classes: int = 11
    widths: tuple[int, ...] = PAPER_WIDTHS
    blocks: int = 4
    field_modules: int = 1
    time: bool = True
    stem_channels: int = STEM_CHANNELS
    max_groups: int = 32
    t1: float = 1.0
    solve: SolveConfig = dataclasses.field(default_factory=lambda: solve_config())


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Residual-baseline hyper-parameters; defaults are the paper's (6 modules).
    Normalisation as `SegNodeConfig` (the two models differ only in their body)."""

    num_classes: int = 11
    widths: tuple[int, ...] = PAPER_WIDTHS
    blocks: int = 4
    modules: int = 6
    stem_channels: int = STEM_CHANNELS
    max_groups: int = 32


class SegNode(eqx.Module):
    """SegNode (Fig. 1): logits = Head(z(t1)), z(t1) = z(0) + int_0^t1 f(t, z) dt,
    z(0) = Transition(Stem(x)), f = `MultiResField`.

    **Arguments:** `config` (a `SegNodeConfig`), `key`.
    """

    stem: Stem
    transition: Transition
    ode: ODEBlock
    head: SegHead
    in_channels: int = eqx.field(static=True)

    def __init__(self, config: SegNodeConfig | None = None, *, key):
        ks, kt, kf, kh = jax.random.split(key, 4)
        c = SegNodeConfig() if config is None else config  # built here: no arrays at import
        self.stem = Stem(3, c.stem_channels, max_groups=c.max_groups, key=ks)
        self.transition = Transition(c.stem_channels, c.widths, max_groups=c.max_groups, key=kt)
        field = MultiResField(c.widths, c.blocks, c.field_modules, time=c.time,
                              max_groups=c.max_groups, key=kf)
        self.ode = ODEBlock(field, 0.0, c.t1, c.solve, name="segnode")
        self.head = SegHead(c.widths, c.num_classes, max_groups=c.max_groups, key=kh)
        self.in_channels = 3

    def initial_state(self, x):
        """z(0) for one image."""
        _check_image("SegNode", x, self.in_channels)
        return self.transition(self.stem(x))

    def __call__(self, x, ts=None):
        """One image -> (scores (K, H, W) or (len(ts), K, H, W), SolveStats)."""
        z0 = self.initial_state(x)
        z, stats = self.ode(z0, ts)
        hw = x.shape[1:]
        if ts is None:
            return self.head(z, hw), stats
        return jax.vmap(lambda zt: self.head(zt, hw))(z), stats

    def batched(self, xs, ts=None):
        """(B, 3, H, W) -> (scores (B, K, H, W) [or (B, T, K, H, W)], SolveStats)."""
        if xs.ndim != 4:
            raise ValueError(f"SegNode.batched: expected (B, 3, H, W), got {xs.shape}.")
        z0 = jax.vmap(self.initial_state)(xs)
        z, stats = self.ode.batched(z0, ts)
        hw = xs.shape[2:]
        head = lambda zz: self.head(zz, hw)  # noqa: E731
        if ts is None:
            return jax.vmap(head)(z), stats
        return jax.vmap(jax.vmap(head))(z), stats


class HRResidualNet(eqx.Module):
    """The residual baseline (Fig. 2): logits = Head(h_K), h_{k+1} = h_k + R_k(h_k)
    = M_k(h_k) for K HRNetV2 modules with separate weights, h_0 = Transition(Stem(x)).

    **Arguments:** `config` (a `BaselineConfig`), `key`.
    """

    stem: Stem
    transition: Transition
    modules: tuple[HRModule, ...]
    head: SegHead
    in_channels: int = eqx.field(static=True)

    def __init__(self, config: BaselineConfig = BaselineConfig(), *, key):
        c = config
        if c.modules < 1:
            raise ValueError(f"HRResidualNet: modules must be >= 1, got {c.modules}.")
        ks, kt, km, kh = jax.random.split(key, 4)
        self.stem = Stem(3, c.stem_channels, max_groups=c.max_groups, key=ks)
        self.transition = Transition(c.stem_channels, c.widths, max_groups=c.max_groups, key=kt)
        self.modules = tuple(
            HRModule(c.widths, c.blocks, max_groups=c.max_groups, key=k)
            for k in jax.random.split(km, c.modules)
        )
        self.head = SegHead(c.widths, c.num_classes, max_groups=c.max_groups, key=kh)
        self.in_channels = 3

    def __call__(self, x, ts=None):
        """One image -> (scores (K, H, W), None)."""
        if ts is not None:
            raise ValueError("HRResidualNet has no trajectory; ts is for SegNode.")
        _check_image("HRResidualNet", x, self.in_channels)
        h = self.transition(self.stem(x))
        for m in self.modules:
            h = m(h)  # = h + R_k(h): the module's own identity path is the skip
        return self.head(h, x.shape[1:]), None

    def batched(self, xs, ts=None):
        if xs.ndim != 4:
            raise ValueError(f"HRResidualNet.batched: expected (B, 3, H, W), got {xs.shape}.")
        return jax.vmap(lambda x: self(x, ts)[0])(xs), None


def build_model(name: str, config, *, key):
    """`"segnode"` -> SegNode, `"baseline"` -> HRResidualNet."""
    if name == "segnode":
        return SegNode(config, key=key)
    if name == "baseline":
        return HRResidualNet(config, key=key)
    raise ValueError(f"unknown segmentation model {name!r}; choose 'segnode' or 'baseline'.")


def with_solve(model: SegNode, *, t1=None, rtol=None, atol=None) -> SegNode:
    """A copy of `model` whose ODE is solved to end time `t1` and/or with tolerances
    `rtol`, `atol` (None: unchanged); the weights are shared.

    This is the speed / accuracy knob of Sec. 4.8 (Fig. 4): a shorter interval
    [0, t1] or looser tolerances mean fewer steps.  t1, rtol and atol are arrays of the
    `ODEBlock` and its `SolveConfig`, not static fields, so a jitted forward pass
    compiled for one setting runs every other setting without recompiling.
    """
    if not isinstance(model, SegNode):
        raise TypeError(f"with_solve: expected a SegNode, got {type(model).__name__}.")
    for name, v in (("t1", t1), ("rtol", rtol), ("atol", atol)):
        if v is not None and not (jnp.isfinite(v) and (v >= 0 if name == "atol" else v > 0)):
            raise ValueError(f"with_solve: {name} must be a finite number "
                             f"{'>= 0' if name == 'atol' else '> 0'}, got {v!r}.")
    ode = model.ode
    old = (ode.t1, ode.config.rtol, ode.config.atol)
    new = tuple(o if v is None else jnp.asarray(v, o.dtype) for o, v in zip(old, (t1, rtol, atol)))
    return eqx.tree_at(lambda m: (m.ode.t1, m.ode.config.rtol, m.ode.config.atol), model, new)
