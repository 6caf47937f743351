"""Layers that are not vector fields: time-concatenated and loop-friendly convolutions,
normalisation, N-jet structured receptive fields (DCN), HRNet parts (SegNode)."""

from jaxode.nn.conv import conv2d, conv2d_hwc
from jaxode.nn.layers import ConcatConv2d, group_norm, norm_act
from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter, njet_basis, refresh_support

__all__ = [
    "ConcatConv2d", "MetaSRFConv2d", "SRFConv2d", "SRFConv2dPerFilter", "conv2d", "conv2d_hwc",
    "group_norm", "njet_basis", "norm_act", "refresh_support",
]
