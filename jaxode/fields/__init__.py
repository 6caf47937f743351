"""Vector fields f(t, z) -> dz/dt, one module each: Chen et al.'s conv ODE function,
the DCN field with N-jet filters, SegNode's multi-resolution field, NODE-EW's evolving
weights and the CNF field; `FlaxField` wraps a Flax NNX module as a field."""

from jaxode.fields.cnf import CNF, CNFField, ConcatMLP
from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.dcn import DCNField
from jaxode.fields.evolving import ElementwiseDynamics, EvolvingODE, LowRankDynamics
from jaxode.fields.flax_field import FlaxField
from jaxode.fields.multires import MultiResField

__all__ = [
    "CNF", "CNFField", "ConcatMLP", "ConvODEFunc", "DCNField", "ElementwiseDynamics",
    "EvolvingODE", "FlaxField", "LowRankDynamics", "MultiResField",
]
