"""Layers that are not vector fields: time-concatenated convolutions, normalisation."""

from jaxode.nn.layers import ConcatConv2d, group_norm, norm_act

__all__ = ["ConcatConv2d", "group_norm", "norm_act"]
