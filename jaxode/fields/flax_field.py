"""`FlaxField`: a Flax NNX module used as the vector field f(t, z) of an `ODEBlock`.

The ODE core integrates Equinox modules: it splits a field into its inexact arrays
(theta, differentiated by every adjoint) and the rest (static).  An NNX module keeps
its parameters inside mutable `nnx.Variable` objects instead, so it is wrapped here
with the functional API of NNX: ``nnx.split(module, nnx.Param, ...)`` gives a static
`GraphDef` and two `nnx.State` PyTrees, the parameters and everything else.  The
parameter State is an ordinary PyTree of arrays, so it is an Equinox field like any
weight matrix: `jaxode.ode.trainable` selects it, Optax updates it, checkpoints save
it.  Each evaluation rebuilds the module with ``nnx.merge`` and calls it, so the
module is never mutated during a solve.

    dz/dt = f(t, z[, args]; theta),   theta = the module's nnx.Param arrays.

Other state (`nnx.BatchStat`, RNG counters, ...) is carried frozen: a vector field
is evaluated many times per solve at times the solver chooses, so running statistics
or per-call RNG advances have no meaning there.  Float non-parameter state is
refused (it would otherwise be trained like a parameter).
"""

from __future__ import annotations

import inspect

import equinox as eqx
import jax.tree_util as jtu


def _required_positional(call) -> int:
    params = inspect.signature(call).parameters.values()
    return sum(1 for p in params
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)


def _accepts_args(call) -> bool:
    """Whether `call` can receive a third positional argument (args)."""
    params = list(inspect.signature(call).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


class FlaxField(eqx.Module):
    """A Flax NNX module with ``__call__(t, z)`` or ``__call__(t, z, args)`` as a vector
    field for `jaxode.ODEBlock` (integrated and differentiated like an Equinox field).

    ``FlaxField(module)`` splits `module` once; the wrapper holds copies of its arrays,
    so later changes to `module` do not reach it (read the trained module back with
    `to_module`).  Gradients arrive in ``grads.field.params``, an `nnx.State` shaped
    like ``nnx.state(module, nnx.Param)``.
    """

    graphdef: object = eqx.field(static=True)
    params: object  # nnx.State of the nnx.Param arrays: theta
    frozen: object  # nnx.State of every other variable (no inexact arrays)
    takes_args: bool = eqx.field(static=True)

    def __init__(self, module):
        from flax import nnx

        if not isinstance(module, nnx.Module):
            raise TypeError(
                f"FlaxField wraps a flax.nnx.Module, got {type(module).__name__}; an Equinox "
                "module or a function f(t, z) can be given to ODEBlock directly.")
        graphdef, params, frozen = nnx.split(module, nnx.Param, ...)
        float_state = [jtu.keystr(path) for path, x in jtu.tree_flatten_with_path(frozen)[0]
                       if eqx.is_inexact_array(x)]
        if float_state:
            raise ValueError(
                f"FlaxField: {type(module).__name__} holds floating-point state that is not "
                f"an nnx.Param ({', '.join(float_state[:4])}), e.g. BatchNorm statistics. A "
                "vector field is evaluated at solver-chosen times, where running statistics "
                "have no meaning: use a normalisation without state (nnx.LayerNorm, "
                "nnx.GroupNorm), or make the array an nnx.Param to train it.")
        call = module.__call__  # bound: (t, z) or (t, z, args)
        n_required = _required_positional(call)
        takes_args = _accepts_args(call)
        if n_required > 3 or (n_required < 2 and not takes_args):
            raise TypeError(
                f"FlaxField: {type(module).__name__}.__call__ must be written (t, z) or "
                f"(t, z, args); it requires {n_required} positional arguments.")
        self.graphdef = graphdef
        self.params = params
        self.frozen = frozen
        self.takes_args = takes_args

    def to_module(self):
        """The NNX module with this wrapper's (e.g. trained) parameters."""
        from flax import nnx

        return nnx.merge(self.graphdef, self.params, self.frozen)

    def __call__(self, t, z, args=None):
        """f(t, z) or f(t, z, args) of the wrapped module."""
        module = self.to_module()
        if self.takes_args:
            return module(t, z, args)
        if args is not None:
            raise ValueError(
                f"FlaxField: args were given but {type(module).__name__}.__call__ is written "
                "(t, z); write it (t, z, args) to receive them.")
        return module(t, z)
