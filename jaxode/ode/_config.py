"""`SolveConfig`: how an ODE block is integrated and differentiated."""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np

from jaxode.ode._adjoint import ADJOINTS, AbstractAdjoint, Backsolve, Direct, RecursiveCheckpoint
from jaxode.ode._regularize import (
    JACOBIAN_PROBES,
    JACOBIAN_PRODUCTS,
    REGULARIZERS,
    TAYLOR_METHODS,
    check_taylor_order,
)
from jaxode.ode._solvers import _BATCH_MODES, ADAPTIVE_SOLVERS, SOLVERS, as_real


def _adjoint_from(adjoint, seminorm) -> AbstractAdjoint:
    """An adjoint strategy from a name or an instance; `seminorm` (a convenience kept
    from the string API) builds ``Backsolve(seminorm=...)``."""
    if isinstance(adjoint, str):
        if adjoint not in ADJOINTS:
            raise ValueError(
                f"SolveConfig: unknown adjoint {adjoint!r}; choose one of "
                f"{', '.join(ADJOINTS)} (or pass a jaxode.ode adjoint instance)."
            )
        adjoint = ADJOINTS[adjoint]()
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"SolveConfig: adjoint must be a name ({', '.join(ADJOINTS)}) or a "
            f"jaxode.ode adjoint instance, got {type(adjoint).__name__}."
        )
    if seminorm is not None:
        if isinstance(adjoint, Backsolve):
            adjoint = Backsolve(seminorm=bool(seminorm), norm=adjoint.norm)
        elif seminorm:
            raise ValueError("SolveConfig: seminorm applies to adjoint='backsolve' only.")
    return adjoint


# ---------------------------------------------------------------------- config/stats


class SolveConfig(eqx.Module):
    """How an ODE block is integrated and differentiated.

    **Arguments:**

    - `solver`: one of ``dopri5`` (default), ``tsit5``, ``bosh3`` (adaptive) or
      ``euler``, ``midpoint``, ``rk4`` (fixed step).
    - `rtol`, `atol`: tolerances of the adaptive solvers.  Stored as arrays so that
      changing them (an inference sweep over tolerances) does not recompile a jitted
      function; a solve uses them in the precision of its state.
    - `adjoint`: how gradients are computed: a name (``backsolve`` (default),
      ``checkpoint``, ``direct``, ``diffrax_backsolve``) or a strategy instance
      (`Backsolve`, `RecursiveCheckpoint`, `Direct`, `DiffraxBacksolve`), e.g.
      ``adjoint=RecursiveCheckpoint(checkpoints=8)``.
    - `seminorm`: shorthand for ``adjoint=Backsolve(seminorm=True)``.
    - `max_steps`: the step budget of one solve.
    - `num_steps` / `dt`: the step of a fixed-step solver (give one of them).
    - `batch_mode`: ``joint`` (one adaptive solve for a whole batch, error measured
      over the batch, as torchdiffeq does) or ``per_sample`` (one solve per example
      via `vmap`; per-example statistics, and one failing example cannot stop the
      others).
    - `on_max_steps`: what a failed solve (out of steps, or NaN/inf) does: ``raise``
      (default: a runtime error that names the block, the cause and how far it got)
      or ``flag`` (the unreached outputs are ``inf``, `SolveStats.max_steps_reached` /
      `SolveStats.nonfinite` say why, and the failed solve contributes zero gradient).
    - `regularizers`: names of ``kinetic``, ``jacobian``, ``local_error``, ``taylor``
      to compute during the solve (`jaxode.ode._regularize`); `jacobian_probe`
      (``rademacher`` or ``gaussian``) and `jacobian_product` (``jvp``: ||J eps||^2,
      default, cheaper to train through; ``vjp``: ||eps^T J||^2) choose the
      Hutchinson estimator of the ``jacobian`` term; `taylor_order` is K of the
      ``taylor`` term int ||d^K z/dt^K||^2 dt (TayNODE; an int >= 1, default 2) and
      `taylor_method` how d^K z/dt^K is computed (``jet``: Taylor mode; ``jvp``: nested
      JVPs; ``auto``, default: ``jvp`` up to K = 3, faster on the conv fields on CPU;
      `jaxode.ode._taylor`).
    """

    solver: str = eqx.field(static=True)
    rtol: jax.Array
    atol: jax.Array
    adjoint: AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    num_steps: int | None = eqx.field(static=True)
    dt: float | None = eqx.field(static=True)
    batch_mode: str = eqx.field(static=True)
    on_max_steps: str = eqx.field(static=True)
    regularizers: tuple[str, ...] = eqx.field(static=True)
    jacobian_probe: str = eqx.field(static=True)
    jacobian_product: str = eqx.field(static=True)
    taylor_order: int = eqx.field(static=True)
    taylor_method: str = eqx.field(static=True)

    def __init__(
        self,
        solver: str = "dopri5",
        rtol=1e-3,
        atol=1e-3,
        adjoint: str | AbstractAdjoint = "backsolve",
        seminorm: bool | None = None,
        max_steps: int = 4096,
        num_steps: int | None = None,
        dt: float | None = None,
        batch_mode: str = "joint",
        on_max_steps: str = "raise",
        regularizers: tuple[str, ...] = (),
        jacobian_probe: str = "rademacher",
        jacobian_product: str = "jvp",
        taylor_order: int = 2,
        taylor_method: str = "auto",
    ):
        self.solver = solver
        self.rtol = as_real(rtol)
        self.atol = as_real(atol)
        self.adjoint = _adjoint_from(adjoint, seminorm)
        self.max_steps = max_steps
        self.num_steps = num_steps
        self.dt = dt
        self.batch_mode = batch_mode
        self.on_max_steps = on_max_steps
        if isinstance(regularizers, str) or not all(isinstance(r, str) for r in regularizers):
            raise TypeError(
                "SolveConfig: regularizers must be a tuple of names "
                f"(of {', '.join(REGULARIZERS)}), got {regularizers!r}."
            )
        self.regularizers = tuple(regularizers)
        self.jacobian_probe = jacobian_probe
        self.jacobian_product = jacobian_product
        self.taylor_order = taylor_order
        self.taylor_method = taylor_method

    def __check_init__(self):
        def bad(name, value, allowed):
            raise ValueError(
                f"SolveConfig: unknown {name} {value!r}; choose one of {', '.join(allowed)}."
            )

        if self.solver not in SOLVERS:
            bad("solver", self.solver, SOLVERS)
        if self.batch_mode not in _BATCH_MODES:
            bad("batch_mode", self.batch_mode, _BATCH_MODES)
        if self.on_max_steps not in ("raise", "flag"):
            bad("on_max_steps", self.on_max_steps, ("raise", "flag"))
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"SolveConfig: max_steps must be a positive int, got {self.max_steps!r}.")
        if self.adaptive:
            if self.num_steps is not None or self.dt is not None:
                raise ValueError(
                    f"SolveConfig: solver {self.solver!r} chooses its own steps; "
                    "num_steps/dt are for the fixed-step solvers euler, midpoint, rk4."
                )
        else:
            if (self.num_steps is None) == (self.dt is None):
                raise ValueError(
                    f"SolveConfig: fixed-step solver {self.solver!r} needs exactly one of "
                    f"num_steps or dt (got num_steps={self.num_steps!r}, dt={self.dt!r})."
                )
            if self.num_steps is not None and not (
                isinstance(self.num_steps, int) and 0 < self.num_steps <= self.max_steps
            ):
                raise ValueError(
                    f"SolveConfig: num_steps must be an int in [1, max_steps={self.max_steps}], "
                    f"got {self.num_steps!r}."
                )
            if self.dt is not None and not self.dt > 0:
                raise ValueError(f"SolveConfig: dt must be positive, got {self.dt!r}.")
        self._check_regularizers(bad)
        for tol_name, zero_ok in (("rtol", False), ("atol", True)):
            value = getattr(self, tol_name)
            if isinstance(value, jax.core.Tracer):
                continue
            value = np.asarray(value)
            ok = np.all(np.isfinite(value) & ((value >= 0) if zero_ok else (value > 0)))
            if not ok:
                raise ValueError(
                    f"SolveConfig: {tol_name} must be a finite number "
                    f"{'>= 0' if zero_ok else '> 0'}, got {value!r}."
                )

    def _check_regularizers(self, bad):
        for name in self.regularizers:
            if name not in REGULARIZERS:
                bad("regularizer", name, REGULARIZERS)
        if len(set(self.regularizers)) != len(self.regularizers):
            raise ValueError(f"SolveConfig: regularizers repeat a name: {self.regularizers!r}.")
        if self.jacobian_probe not in JACOBIAN_PROBES:
            bad("jacobian_probe", self.jacobian_probe, JACOBIAN_PROBES)
        if self.jacobian_product not in JACOBIAN_PRODUCTS:
            bad("jacobian_product", self.jacobian_product, JACOBIAN_PRODUCTS)
        try:
            check_taylor_order(self.taylor_order)
        except ValueError as e:
            raise ValueError(f"SolveConfig: {e}") from None
        if self.taylor_method not in TAYLOR_METHODS:
            bad("taylor_method", self.taylor_method, TAYLOR_METHODS)
        if "local_error" in self.regularizers:
            if not self.adaptive:
                raise ValueError(
                    f"SolveConfig: the local_error regulariser needs an adaptive solver "
                    f"(dopri5, tsit5, bosh3); {self.solver!r} makes no error estimate."
                )
            if not isinstance(self.adjoint, (RecursiveCheckpoint, Direct)):
                raise ValueError(
                    "SolveConfig: the local_error regulariser is differentiable only through "
                    f"the discrete solve: use adjoint='checkpoint' or 'direct', not "
                    f"{self.adjoint.name!r}."
                )

    @property
    def adaptive(self) -> bool:
        return self.solver in ADAPTIVE_SOLVERS

    @property
    def seminorm(self) -> bool:
        return bool(getattr(self.adjoint, "seminorm", False))

    def replace(self, **changes) -> SolveConfig:
        """A copy with some settings changed, e.g. ``cfg.replace(rtol=1e-5)``."""
        names = ("solver", "rtol", "atol", "adjoint", "max_steps", "num_steps", "dt",
                 "batch_mode", "on_max_steps", "regularizers", "jacobian_probe",
                 "jacobian_product", "taylor_order", "taylor_method")
        fields = {k: getattr(self, k) for k in names}
        fields.update(changes)
        return SolveConfig(**fields)
