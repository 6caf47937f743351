"""Vector fields f(t, z) -> dz/dt, one module each."""

from jaxode.fields.conv_odefunc import ConvODEFunc

__all__ = ["ConvODEFunc"]
