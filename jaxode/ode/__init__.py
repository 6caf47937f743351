"""The ODE core: the one place in jaxode that calls Diffrax.

A continuous-depth block maps an input state z(t0) to z(t1) by integrating

    dz/dt = f(t, z, args; theta),        z(t0) = z0,

where f is a vector field (an Equinox module, see `jaxode.fields`) with parameters
theta.  This is the "ODE block" of Chen et al. (2018), used by every paper of the
project: the ODE-Net classifiers of Carrara et al. (Sec. 3), the DCN blocks of
Tomen et al. (Sec. 3), SegNode's multi-resolution ODE and NODE-EW's joint (z, theta)
system.

- `SolveConfig` (`_config.py`): solver, tolerances, adjoint strategy, step limits,
  batch mode, what a failure does.
- `ODEBlock` (`_block.py`): the block; gradients in z0, theta, args and the times.
- Adjoint strategies (`_adjoint.py`): `Backsolve` (default, counted backward solve),
  `RecursiveCheckpoint`, `Direct`, `DiffraxBacksolve`.
- Regularisers of the dynamics (`_regularize.py`): kinetic energy, Jacobian norm,
  the solver's local error, TayNODE's K-th derivative (`_taylor.py`), computed during
  the forward solve.
- One Diffrax solve (`_solve.py`): step control that stops on NaN/inf, the starting
  step, statistics; the solvers and `SolveStats` (`_solvers.py`).
"""

from jaxode.ode._adjoint import (
    ADJOINTS,
    AbstractAdjoint,
    Backsolve,
    DiffraxBacksolve,
    Direct,
    RecursiveCheckpoint,
)
from jaxode.ode._block import (
    ODEBlock,
    backward_nfe,
    differentiated,
    is_ode_block,
    train_value_and_grad,
    trainable,
)
from jaxode.ode._config import SolveConfig
from jaxode.ode._regularize import REGULARIZERS, regularizer_stats
from jaxode.ode._solvers import (
    ADAPTIVE_SOLVERS,
    RK4,
    SOLVERS,
    MaxStepsReached,
    SolveStats,
)

__all__ = [
    "ADAPTIVE_SOLVERS",
    "ADJOINTS",
    "REGULARIZERS",
    "RK4",
    "SOLVERS",
    "AbstractAdjoint",
    "Backsolve",
    "DiffraxBacksolve",
    "Direct",
    "MaxStepsReached",
    "ODEBlock",
    "RecursiveCheckpoint",
    "SolveConfig",
    "SolveStats",
    "backward_nfe",
    "differentiated",
    "is_ode_block",
    "regularizer_stats",
    "train_value_and_grad",
    "trainable",
]
