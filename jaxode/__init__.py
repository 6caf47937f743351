"""jaxode: continuous-depth vision models in JAX (Equinox modules, Diffrax solves)."""

from jaxode import backend as _backend

_backend.apply_env()  # JAXODE_CPU_FAST=1: opt-in XLA:CPU options, before any computation

from jaxode.ode import (
    ODEBlock,
    SolveConfig,
    SolveStats,
    backward_nfe,
    trainable,
)

__version__ = "0.1.0"
__all__ = ["ODEBlock", "SolveConfig", "SolveStats", "backward_nfe", "trainable"]
