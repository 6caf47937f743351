"""The layers of a built model, in the order its forward pass applies them.

``layer_table(model)`` walks a model of `jaxode.models` and lists one `Layer` row per
layer: where it sits (`scope`), what it is (`kind`), its channels, GroupNorm or
convolution groups, kernel, stride, padding, bias, and the activation applied right
after it.  Everything is read from the built modules (weight shapes, the GroupNorm's
group count, the conv's stride and padding, the module's `activation` field), so
the table shows what the model computes, not what its factory was asked for.
``format_table(rows)`` renders it for printing::

    from jaxode.models.dcn import build_model
    from jaxode.models.describe import format_table, layer_table
    print(format_table(layer_table(build_model("dcn_full", key=jax.random.PRNGKey(0)))))

Row conventions:

- ``gn``: GroupNorm; `groups` is its group count, `bias` says it is affine.
- ``conv``: a pixel convolution; ``concat_conv``: one that sees t as an extra
  constant first input channel (Chen et al.'s ConcatConv2d), so `c_in` = C + 1.
- ``srf`` (one sigma per layer), ``srf_ji`` (one per filter), ``srf_sigma_t``,
  ``srf_sigma_t2``, ``srf_sigma_alpha_t`` (meta-parametrised): N-jet SRF layers
  (`jaxode.nn.srf`), prefixed ``concat_`` when t is an input channel; `kernel` is
  ``"jet2 r(sigma)"`` for an order-2 basis on the half-width ceil(2 sigma + 0.5)
  with ``"same"`` padding, or ``"jet2 7"`` for the fixed 7x7 support.
- ``ode``: the start of an ODE block (its field's rows follow, scope ``.../field``);
  ``ode_ew``: a NODE-EW block, whose field rows are followed by one
  ``dtheta/dt <dynamics>`` row; ``add``: a residual sum closing a block
  (`c_in`, `c_out`: the summed width); ``minus_input``: f = M(z) - z.
- ``avgpool``: global average pooling; ``dropout(p)``; ``linear``;
  ``upsample``: bilinear resizing.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import equinox as eqx

from jaxode.fields.conv_odefunc import ConvODEFunc
from jaxode.fields.dcn import DCNField
from jaxode.fields.evolving import EvolvingODE
from jaxode.fields.multires import MultiResField
from jaxode.models.classifiers import (
    Head,
    ODENetClassifier,
    PreActBlock,
    ResNetClassifier,
    Sequence,
)
from jaxode.models.dcn import DCNClassifier, ResidualBlock, _Down
from jaxode.models.node_ew import NODEEWClassifier
from jaxode.models.segnode import HRResidualNet, SegNode
from jaxode.nn.hrnet import FuseDown, FuseUp, HRModule, NormActConv, SegHead, Stem, Transition
from jaxode.nn.layers import ConcatConv2d
from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, SRFConv2dPerFilter
from jaxode.ode import ODEBlock

__all__ = ["Layer", "layer_table", "format_table"]


class Layer(NamedTuple):
    """One row of `layer_table` (None where a column does not apply)."""

    scope: str
    kind: str
    c_in: int | None = None
    c_out: int | None = None
    groups: int | None = None
    kernel: int | str | None = None
    stride: int | None = None
    padding: int | str | None = None
    bias: bool | None = None
    activation: str | None = None


def activation_name(fn: Callable) -> str:
    """The name of an activation function (``relu``, ``celu``, ...)."""
    return getattr(fn, "__name__", type(fn).__name__)


def _one(pair, what: str):
    """A square kernel / stride / symmetric padding as one int (else the tuple)."""
    if isinstance(pair, int):
        return pair
    pair = tuple(pair)
    if what == "padding":
        pair = tuple(p if isinstance(p, int) else (p[0] if p[0] == p[1] else tuple(p))
                     for p in pair)
    return pair[0] if all(p == pair[0] for p in pair) else pair


def _conv_row(scope, conv: eqx.nn.Conv2d, kind="conv") -> Layer:
    return Layer(scope, kind, conv.in_channels, conv.out_channels, conv.groups,
                 _one(conv.kernel_size, "kernel"), _one(conv.stride, "stride"),
                 _one(conv.padding, "padding"), conv.use_bias)


def _srf_row(scope, layer) -> Layer:
    prefix = "concat_" if layer.time_channel else ""
    c_in = layer.in_channels + (1 if layer.time_channel else 0)
    jet = f"jet{layer.order}"
    if isinstance(layer, SRFConv2dPerFilter):
        size = 2 * layer.grid_half_width + 1
        return Layer(scope, prefix + "srf_ji", c_in, layer.out_channels, 1, f"{jet} {size}",
                     layer.stride, layer.grid_half_width, False)
    if isinstance(layer, MetaSRFConv2d):
        form = "sigma_alpha_t" if layer.alpha_bias is not None else (
            "sigma_t" if layer.sigma_form == "linear" else "sigma_t2")
        return Layer(scope, f"{prefix}srf_{form}", c_in, layer.out_channels, 1,
                     f"{jet} r(sigma(t))", layer.stride, "same", False)
    return Layer(scope, prefix + "srf", c_in, layer.out_channels, 1, f"{jet} r(sigma)",
                 layer.stride, "same", False)


def _gn_row(scope, norm: eqx.nn.GroupNorm, act: Callable | None = None) -> Layer:
    return Layer(scope, "gn", norm.channels, norm.channels, norm.groups, bias=norm.channelwise_affine,
                 activation=None if act is None else activation_name(act))


def _set_activation(rows: list[Layer], fn: Callable) -> None:
    if not rows:
        raise ValueError("layer_table: an activation before any layer")
    rows[-1] = rows[-1]._replace(activation=activation_name(fn))


def _leaf(scope, m) -> list[Layer]:
    if isinstance(m, eqx.nn.GroupNorm):
        return [_gn_row(scope, m)]
    if isinstance(m, ConcatConv2d):
        return [_conv_row(scope, m.conv, "concat_conv")]
    if isinstance(m, eqx.nn.Conv2d):
        return [_conv_row(scope, m)]
    if isinstance(m, (SRFConv2d, SRFConv2dPerFilter, MetaSRFConv2d)):
        return [_srf_row(scope, m)]
    if isinstance(m, eqx.nn.Linear):
        return [Layer(scope, "linear", m.in_features, m.out_features, bias=m.use_bias)]
    return []


def _norm_act_conv_field(scope, f) -> list[Layer]:
    """GN -> act -> conv -> GN -> act -> conv -> GN (ConvODEFunc, DCNField)."""
    return [_gn_row(scope, f.norm1, f.activation), *_leaf(scope, f.conv1),
            _gn_row(scope, f.norm2, f.activation), *_leaf(scope, f.conv2),
            _gn_row(scope, f.norm3)]


def _preact_block(scope, b: PreActBlock) -> list[Layer]:
    rows = [_gn_row(scope, b.norm1, b.activation)]
    if b.shortcut is not None:
        rows += _leaf(scope + "/shortcut", b.shortcut)
    rows += [*_leaf(scope, b.conv1), _gn_row(scope, b.norm2, b.activation), *_leaf(scope, b.conv2)]
    return rows + [Layer(scope, "add", b.conv2.out_channels, b.conv2.out_channels)]


def _head(scope, h: Head) -> list[Layer]:
    rows = [_gn_row(scope, h.norm, h.activation), Layer(scope, "avgpool")]
    if h.dropout > 0:
        rows.append(Layer(scope, f"dropout({h.dropout:g})"))
    return rows + _leaf(scope, h.linear)


def _sequence(scope, seq: Sequence) -> list[Layer]:
    rows: list[Layer] = []
    for layer in seq.layers:
        if isinstance(layer, eqx.nn.Lambda):
            _set_activation(rows, layer.fn)
        else:
            rows += _walk(scope, layer)
    return rows


def _nac(scope, u: NormActConv) -> list[Layer]:
    return [_gn_row(scope, u.norm, u.activation), *_leaf(scope, u.conv)]


def _hr_module(scope, m: HRModule) -> list[Layer]:
    rows: list[Layer] = []
    for i, blocks in enumerate(m.branches):
        for b, block in enumerate(blocks):
            s = f"{scope}/branch{i + 1}/block{b + 1}"
            rows += _nac(s, block.unit1) + _nac(s, block.unit2)
            rows.append(Layer(s, "add", m.widths[i], m.widths[i]))
    for i, row in enumerate(m.fuse):
        for j, f in enumerate(row):
            if f is not None:
                rows += _walk(f"{scope}/fuse{j + 1}to{i + 1}", f)
        rows.append(Layer(f"{scope}/fuse_to{i + 1}", "add", m.widths[i], m.widths[i]))
    return rows


def _walk(scope: str, m) -> list[Layer]:
    """The rows of module `m` in execution order."""
    leaf = _leaf(scope, m)
    if leaf:
        return leaf
    if isinstance(m, Sequence):
        return _sequence(scope, m)
    if isinstance(m, (ConvODEFunc, DCNField)):
        return _norm_act_conv_field(scope, m)
    if isinstance(m, ODEBlock):
        return [Layer(scope, "ode"), *_walk(scope + "/field", m.field)]
    if isinstance(m, EvolvingODE):
        g = type(m.g).__name__
        return [Layer(scope, "ode_ew"), *_walk(scope + "/field", m.fixed_field()),
                Layer(scope + "/field", f"dtheta/dt {g}")]
    if isinstance(m, PreActBlock):
        return _preact_block(scope, m)
    if isinstance(m, ResidualBlock):
        return [_gn_row(scope, m.norm1, m.activation), *_leaf(scope, m.conv1),
                _gn_row(scope, m.norm2, m.activation), *_leaf(scope, m.conv2),
                Layer(scope, "add", m.norm1.channels, m.norm1.channels)]
    if isinstance(m, _Down):
        return [_gn_row(scope, m.norm, m.activation), *_leaf(scope, m.conv)]
    if isinstance(m, Head):
        return _head(scope, m)
    if isinstance(m, NormActConv):
        return _nac(scope, m)
    if isinstance(m, Stem):
        return _leaf(scope, m.conv1) + _nac(scope, m.unit2)
    if isinstance(m, Transition):
        return [r for k, u in enumerate(m.units) for r in _nac(f"{scope}/z{k + 1}", u)]
    if isinstance(m, FuseDown):
        return [r for u in m.units for r in _nac(scope, u)]
    if isinstance(m, FuseUp):
        return _nac(scope, m.unit) + [Layer(scope, "upsample")]
    if isinstance(m, HRModule):
        return _hr_module(scope, m)
    if isinstance(m, MultiResField):
        rows = [r for k, mod in enumerate(m.modules) for r in _hr_module(f"{scope}/module{k + 1}", mod)]
        return rows + [Layer(scope, "minus_input")]
    if isinstance(m, SegHead):
        rows = []
        for k, u in enumerate(m.units):
            rows += _nac(f"{scope}/branch{k + 1}", u) + [Layer(f"{scope}/branch{k + 1}", "upsample")]
        return rows + [Layer(scope, "add"), Layer(scope, "upsample")]
    raise TypeError(f"layer_table: no description for {type(m).__name__} at {scope!r}; "
                    "describe it in jaxode/models/describe.py.")


def _model_rows(model) -> list[Layer]:
    if isinstance(model, DCNClassifier):
        rows = _walk("stem", model.stem)
        for i, block in enumerate(model.blocks):
            rows += _walk(f"block{i + 1}", block)
            if i < len(model.downs):
                rows += _walk(f"down{i + 1}", model.downs[i])
        return rows + [_gn_row("head", model.head_norm, model.activation), Layer("head", "avgpool"),
                       *_leaf("head", model.head)]
    if isinstance(model, (ODENetClassifier, NODEEWClassifier)):
        return _walk("stem", model.stem) + _walk("ode", model.ode) + _walk("head", model.head)
    if isinstance(model, ResNetClassifier):
        rows = _walk("stem", model.stem)
        for i, block in enumerate(model.blocks):
            rows += _walk(f"block{i + 1}", block)
        return rows + _walk("head", model.head)
    if isinstance(model, (SegNode, HRResidualNet)):
        rows = _walk("stem", model.stem) + _walk("transition", model.transition)
        if isinstance(model, SegNode):
            rows += _walk("ode", model.ode)
        else:
            for k, m in enumerate(model.modules):
                rows += _walk(f"module{k + 1}", m)
        return rows + _walk("head", model.head)
    return _walk(type(model).__name__, model)


def layer_table(model) -> list[Layer]:
    """The ordered layers of `model` (see the module docstring for the columns).

    Works on models built with arrays or with `equinox.filter_eval_shape` (only
    shapes and static fields are read)."""
    return _model_rows(model)


def format_table(rows: list[Layer]) -> str:
    """`rows` as an aligned text table, one layer per line."""
    header = Layer._fields
    cells = [header] + [tuple("" if v is None else str(v) for v in r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip()
                     for c in cells)
