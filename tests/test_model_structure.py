"""Every named model has the layers of its paper's released code (Issue 25).

Parameter counts prove layer sizes, not layers: GroupNorm has 2C parameters whatever
its group count, so a model with the wrong groups (DCN-full with min(32, d) groups
where its script has GroupNorm(d, d)) counts right and computes something else.
Here each model's ordered layers, read from the built model by
`jaxode.models.describe.layer_table`, are compared with tables written by hand from
../shared/REFERENCE_FACTS.md, the released scripts it summarises, and the papers.

Row: (scope, kind, c_in, c_out, groups, kernel, stride, padding, bias, activation);
for GroupNorm `groups` is its group count and `bias` its affine flag, and the
activation is the one applied right after the layer (see `jaxode.models.describe`).
Models are built with `equinox.filter_eval_shape` (shapes only, no weights).
"""

import equinox as eqx
import jax
import pytest

from jaxode.models import make_model
from jaxode.models.dcn import MODEL_NAMES, build_model
from jaxode.models.describe import Layer, format_table, layer_table
from jaxode.models.node_ew import node_ew_mnist
from jaxode.models.segnode import BaselineConfig, SegNodeConfig
from jaxode.models.segnode import build_model as build_seg_model

KEY = jax.random.PRNGKey(0)


# ------------------------------------------------------------------ row makers
# Shorthands for writing the tables; each is one row in the layout of `Layer`.


def gn(scope, c, groups, act=None):
    """GroupNorm(groups, c), affine, followed by `act`."""
    return Layer(scope, "gn", c, c, groups, None, None, None, True, act)


def conv(scope, c_in, c_out, k, s, p, bias, kind="conv"):
    return Layer(scope, kind, c_in, c_out, 1, k, s, p, bias)


def tconv(scope, c, bias=True):
    """Chen et al.'s ConcatConv2d: conv 3x3 pad 1 over [t; x], (c + 1) -> c."""
    return conv(scope, c + 1, c, 3, 1, 1, bias, "concat_conv")


def srf(scope, c_in, c_out, stride=1, kind="srf", time=False):
    """An N-jet SRF layer, order 2, no bias: "same" padding on the support
    ceil(2 sigma + 0.5) (REFERENCE_FACTS, SRF layer), or the fixed 7x7 support of
    the sigma^ji layer (padding 3)."""
    kernel, pad = ("jet2 7", 3) if kind == "srf_ji" else (
        ("jet2 r(sigma(t))" if kind.startswith("srf_sigma") else "jet2 r(sigma)"), "same")
    return Layer(scope, ("concat_" if time else "") + kind, c_in + int(time), c_out, 1,
                 kernel, stride, pad, False)


def mark(scope, kind, c=None):
    return Layer(scope, kind, c, c)


def head(c, groups, classes=10, act="relu", dropout=None):
    """GN -> act -> global average pool [-> dropout] -> linear with bias."""
    rows = [gn("head", c, groups, act), mark("head", "avgpool")]
    if dropout:
        rows.append(mark("head", f"dropout({dropout:g})"))
    return rows + [Layer("head", "linear", c, classes, bias=True)]


def preact_block(scope, c_in, c_out, stride, groups):
    """REFERENCE_FACTS (Carrara et al.), pre-activation residual block: GN(in) ->
    ReLU -> [shortcut conv 1x1 stride s, no bias, on the activated input when
    down-sampling] -> conv 3x3 stride s pad 1 no bias -> GN(out) -> ReLU -> conv 3x3
    pad 1 no bias -> add the shortcut."""
    rows = [gn(scope, c_in, groups(c_in), "relu")]
    if stride != 1 or c_in != c_out:
        rows.append(conv(scope + "/shortcut", c_in, c_out, 1, stride, 0, False))
    return rows + [conv(scope, c_in, c_out, 3, stride, 1, False), gn(scope, c_out, groups(c_out), "relu"),
                   conv(scope, c_out, c_out, 3, 1, 1, False), mark(scope, "add", c_out)]


def ode_function(scope, c, groups, act, conv_rows):
    """REFERENCE_FACTS: GN -> act -> conv(t, .) -> GN -> act -> conv(t, .) -> GN."""
    f = scope + "/field"
    return [mark(scope, "ode"), gn(f, c, groups, act), conv_rows(f),
            gn(f, c, groups, act), conv_rows(f), gn(f, c, groups)]


def min32(c):
    return min(32, c)


def per_channel(c):
    return c


# ------------------------------------------------------------------ DCN family
# REFERENCE_FACTS, "Deep Continuous Networks": backbone input conv 3x3 3->32 no
# padding with bias; block(32); down-sampling GN -> act -> conv 4x4 stride 2 pad 1
# with bias (32->64); block(64); down-sampling (64->128); block(128); head GN(128) ->
# act -> global average pool -> linear 128->10.  In the "full" models the input conv
# and both down-samplings are SRF layers (32 -> 16 -> 8).  CELU in the DCN models,
# ReLU in ODE-Net and the ResNet baselines.  Time is a concatenated channel.
# GroupNorm(min(32, d), d) everywhere, except the DCN-full script
# (experiments/cifar10_dcn_full.py: `def norm(dim): return nn.GroupNorm(dim, dim)`,
# used in ODEfunc, both down-samplings and the head).

# DCN-full, written out in full: the model the issue is about.
DCN_FULL = [
    srf("stem", 3, 32),
    mark("block1", "ode"),
    gn("block1/field", 32, 32, "celu"), srf("block1/field", 32, 32, time=True),
    gn("block1/field", 32, 32, "celu"), srf("block1/field", 32, 32, time=True),
    gn("block1/field", 32, 32),
    gn("down1", 32, 32, "celu"), srf("down1", 32, 64, stride=2),
    mark("block2", "ode"),
    gn("block2/field", 64, 64, "celu"), srf("block2/field", 64, 64, time=True),
    gn("block2/field", 64, 64, "celu"), srf("block2/field", 64, 64, time=True),
    gn("block2/field", 64, 64),
    gn("down2", 64, 64, "celu"), srf("down2", 64, 128, stride=2),
    mark("block3", "ode"),
    gn("block3/field", 128, 128, "celu"), srf("block3/field", 128, 128, time=True),
    gn("block3/field", 128, 128, "celu"), srf("block3/field", 128, 128, time=True),
    gn("block3/field", 128, 128),
    gn("head", 128, 128, "celu"), mark("head", "avgpool"), Layer("head", "linear", 128, 10, bias=True),
]

# name -> (block, the block's convolution, full, activation, groups), one line per
# released script of Table 1 / Table 5.
DCN_MODELS = {
    "dcn_ode": ("ode", "srf", False, "celu", min32),                # cifar10_dcn_ode.py
    "dcn_full": ("ode", "srf", True, "celu", per_channel),          # cifar10_dcn_full.py
    "dcn_sigma_ji": ("ode", "srf_ji", False, "celu", min32),        # cifar10_dcn_sigma_ji.py
    "dcn_sigma_t": ("ode", "srf_sigma_t", False, "celu", min32),    # meta_param_dcn_sigma_t.py
    "dcn_sigma_t2": ("ode", "srf_sigma_t2", False, "celu", min32),  # meta_param_dcn_sigma_t2.py
    "dcn_sigma_alpha_t": ("ode", "srf_sigma_alpha_t", False, "celu", min32),  # meta_param_dcn_alpha_t.py
    "odenet": ("ode", "pixel", False, "relu", min32),               # cifar10_ode_net.py
    "resnet_blocks": ("res", "pixel", False, "relu", min32),        # cifar10_resnet_blocks.py
    "resnet_srf_blocks": ("res", "srf", False, "relu", min32),      # cifar10_resnet_srf_blocks.py
    "resnet_srf_full": ("res", "srf", True, "relu", min32),         # cifar10_resnet_srf_full.py
}


def dcn_table(block, filters, full, act, groups):
    rows = [srf("stem", 3, 32) if full else conv("stem", 3, 32, 3, 1, 0, True)]
    widths = (32, 64, 128)
    for i, d in enumerate(widths):
        s = f"block{i + 1}"
        if block == "ode":
            def field_conv(f, d=d):
                if filters == "pixel":
                    return tconv(f, d)
                return srf(f, d, d, kind=filters, time=True)
            rows += ode_function(s, d, groups(d), act, field_conv)
        else:  # REFERENCE_FACTS: pre-activation GN -> ReLU -> conv -> GN -> ReLU -> conv,
            # identity shortcut; pixel convs 3x3 pad 1 no bias, or SRF layers
            def res_conv(d=d, s=s):
                return conv(s, d, d, 3, 1, 1, False) if filters == "pixel" else srf(s, d, d)
            rows += [gn(s, d, groups(d), act), res_conv(), gn(s, d, groups(d), act), res_conv(),
                     mark(s, "add", d)]
        if i + 1 < len(widths):
            down = f"down{i + 1}"
            rows.append(gn(down, d, groups(d), act))
            rows.append(srf(down, d, widths[i + 1], stride=2) if full
                        else conv(down, d, widths[i + 1], 4, 2, 1, True))
    return rows + head(128, groups(128), act=act)


# ------------------------------------------------- Carrara et al., Chen et al.
# REFERENCE_FACTS (Carrara et al.) and fabiocarrara/neural-ode-features model.py:
# norm(dim) = GroupNorm(min(32, dim), dim); stem conv 3x3 3->64 stride 1 no padding
# with bias, block 64->64 /2, block 64->256 /2; head GN -> ReLU -> pool -> dropout
# (0.5) -> linear 256->10; ODE function with ConcatConv 3x3 257->256 with bias;
# ODE-only: conv 4x4 3->256 stride 2 (pad 1 in model.py) with bias, no activation.


def carrara_field(c=256):
    return ode_function("ode", c, min32(c), "relu", lambda f: tconv(f, c))


CARRARA_STEM_CONV = conv("stem", 3, 64, 3, 1, 0, True)
CARRARA = {
    # ResNet keeps the stem's second block as its first feature block (Sec. 4.2's
    # seven residual modules), so it is scoped block1 there.
    "carrara-resnet": [CARRARA_STEM_CONV, *preact_block("stem", 64, 64, 2, min32),
                       *preact_block("block1", 64, 256, 2, min32),
                       *[r for i in range(6) for r in preact_block(f"block{i + 2}", 256, 256, 1, min32)],
                       *head(256, 32, dropout=0.5)],
    "carrara-resode": [CARRARA_STEM_CONV, *preact_block("stem", 64, 64, 2, min32),
                       *preact_block("stem", 64, 256, 2, min32), *carrara_field(),
                       *head(256, 32, dropout=0.5)],
    "carrara-odeonly": [conv("stem", 3, 256, 4, 2, 1, True), *carrara_field(),
                        *head(256, 32, dropout=0.5)],
}

# REFERENCE_FACTS (Chen et al.), torchdiffeq's odenet_mnist.py, 'conv' down-sampling:
# conv 3x3 1->64 no padding with bias; GN(32, 64) -> ReLU -> conv 4x4 stride 2 pad 1;
# GN -> ReLU -> conv 4x4 stride 2 pad 1; ODE function at 64 channels (ConcatConv
# 65->64 with bias); head GN -> ReLU -> pool -> linear 64->10.  ResNet: six 64-channel
# residual blocks in place of the ODE block.
CHEN_DOWN = [conv("stem", 1, 64, 3, 1, 0, True), gn("stem", 64, 32, "relu"),
             conv("stem", 64, 64, 4, 2, 1, True), gn("stem", 64, 32, "relu"),
             conv("stem", 64, 64, 4, 2, 1, True)]
CHEN_FIELD = ode_function("ode", 64, 32, "relu", lambda f: tconv(f, 64))
CHEN = {
    "chen-odenet": [*CHEN_DOWN, *CHEN_FIELD, *head(64, 32)],
    "chen-resnet": [*CHEN_DOWN,
                    *[r for i in range(6) for r in preact_block(f"block{i + 1}", 64, 64, 1, min32)],
                    *head(64, 32)],
}

# NODE-EW (He et al. Sec. 4.2: "we utilize the structure mentioned in [3]", i.e.
# Chen et al.'s MNIST network): the same layers, the ODE block's weights evolving by
# dtheta/dt = g(t, theta; theta_1).  The paper does not specify g; ours is
# `ElementwiseDynamics` (jaxode.fields.evolving), one row after the field.
NODE_EW = [*CHEN_DOWN, Layer("ode", "ode_ew"), *CHEN_FIELD[1:],
           Layer("ode/field", "dtheta/dt ElementwiseDynamics"), *head(64, 32)]


# ------------------------------------------------------------------ SegNode
# No released code: each choice cites the paper (Khoshsirat & Kambhamettu) or says
# it is ours.
#  - stem: "two stride-2 3x3 convolutions" (Sec. 4.1), 64 channels (HRNetV2's stem;
#    ours), no bias (HRNet's convolutions; ours), pre-activation order (Fig. 2: "one
#    set of batch normalization, ReLU, and convolutional layers").
#  - normalisation: GroupNorm with the largest divisor of C <= 32 groups (ours; the
#    paper has batch normalisation, Fig. 2), 24 groups at 48 channels, else 32.
#  - transition: "convolutional layers to create the input feature-maps with the
#    corresponding resolution and number of channels" (Sec. 3.2); z1 from the stem,
#    z_k from z_{k-1} by a stride-2 3x3 conv (ours, as HRNet).
#  - widths 48, 96, 192, 384 (Sec. 4.1); 4 basic blocks per branch (HRNetV2; ours);
#    fusion: 1x1 conv + bilinear up-sampling (Fig. 1) or stride-2 3x3 convs (Fig. 1);
#    time as an extra channel of the branch convs (ours).
#  - SegNode's field: one HRNet module, f = M(z) - z (Sec. 3.2; ours: the paper's
#    best model has two modules in the main body, Sec. 4.1); the baseline: six
#    modules in series (Sec. 3.1), each a residual unit.
#  - head: per branch a conv to the classes, bilinear up-sampling, sum (Sec. 3.2,
#    Fig. 1), then up-sampling to the input size; 1x1 with bias (ours).
SEG_WIDTHS = (48, 96, 192, 384)


def seg_groups(c):
    return max(g for g in range(1, 33) if c % g == 0)


def nac(scope, c_in, c_out, k, s, bias=False, kind="conv"):
    """One small block: GN -> ReLU -> conv (pad k // 2)."""
    if kind == "concat_conv":
        return [gn(scope, c_in, seg_groups(c_in), "relu"), conv(scope, c_in + 1, c_out, k, s, k // 2, bias, kind)]
    return [gn(scope, c_in, seg_groups(c_in), "relu"), conv(scope, c_in, c_out, k, s, k // 2, bias)]


def hr_module(scope, time):
    kind = "concat_conv" if time else "conv"
    rows = []
    for i, c in enumerate(SEG_WIDTHS):
        for b in range(4):
            s = f"{scope}/branch{i + 1}/block{b + 1}"
            rows += nac(s, c, c, 3, 1, kind=kind) + nac(s, c, c, 3, 1, kind=kind) + [mark(s, "add", c)]
    for i, c_to in enumerate(SEG_WIDTHS):
        for j, c_from in enumerate(SEG_WIDTHS):
            s = f"{scope}/fuse{j + 1}to{i + 1}"
            if j > i:
                rows += nac(s, c_from, c_to, 1, 1) + [mark(s, "upsample")]
            elif j < i:
                for step in range(i - j):
                    rows += nac(s, c_from, c_to if step == i - j - 1 else c_from, 3, 2)
        rows.append(mark(f"{scope}/fuse_to{i + 1}", "add", c_to))
    return rows


def seg_table(body):
    rows = [conv("stem", 3, 64, 3, 2, 1, False), *nac("stem", 64, 64, 3, 2)]
    rows += nac("transition/z1", 64, SEG_WIDTHS[0], 3, 1)
    for k in range(1, 4):
        rows += nac(f"transition/z{k + 1}", SEG_WIDTHS[k - 1], SEG_WIDTHS[k], 3, 2)
    rows += body
    for k, c in enumerate(SEG_WIDTHS):
        rows += nac(f"head/branch{k + 1}", c, 11, 1, 1, bias=True) + [mark(f"head/branch{k + 1}", "upsample")]
    return rows + [mark("head", "add"), mark("head", "upsample")]


SEGNODE = seg_table([mark("ode", "ode"), *hr_module("ode/field/module1", time=True),
                     mark("ode/field", "minus_input")])
SEG_BASELINE = seg_table([r for k in range(6) for r in hr_module(f"module{k + 1}", time=False)])


# ------------------------------------------------------------------ the tests


def assert_same_layers(name, got, want):
    """Equal row lists, or a failure naming the first differing row of `name`."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            diff = [f"{f}: built {a!r}, reference {b!r}" for f, a, b in zip(Layer._fields, g, w) if a != b]
            pytest.fail(f"{name}: layer {i} ({w.scope} {w.kind}) differs from the reference: "
                        + "; ".join(diff) + "\n" + format_table(got))
    assert len(got) == len(want), (
        f"{name}: {len(got)} layers built, {len(want)} in the reference\n{format_table(got)}")


def test_dcn_full_table_is_the_released_script():
    """DCN-full: GroupNorm(d, d) in every ODE function, down-sampling and the head."""
    model = eqx.filter_eval_shape(lambda: build_model("dcn_full", key=KEY))
    assert_same_layers("dcn_full", layer_table(model), DCN_FULL)
    assert dcn_table(*DCN_MODELS["dcn_full"]) == DCN_FULL  # the generated table agrees


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dcn_models(name):
    model = eqx.filter_eval_shape(lambda: build_model(name, key=KEY))
    assert_same_layers(name, layer_table(model), dcn_table(*DCN_MODELS[name]))


def test_every_dcn_model_has_a_table():
    assert set(DCN_MODELS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", sorted({**CARRARA, **CHEN}))
def test_classifiers(name):
    model = eqx.filter_eval_shape(lambda: make_model(name, key=KEY))
    assert_same_layers(name, layer_table(model), {**CARRARA, **CHEN}[name])


def test_node_ew():
    model = eqx.filter_eval_shape(lambda: node_ew_mnist(key=KEY))
    assert_same_layers("node_ew_mnist", layer_table(model), NODE_EW)


@pytest.mark.parametrize("name,config,want", [("segnode", SegNodeConfig(), SEGNODE),
                                              ("baseline", BaselineConfig(), SEG_BASELINE)])
def test_segnode_and_baseline(name, config, want):
    model = eqx.filter_eval_shape(lambda: build_seg_model(name, config, key=KEY))
    assert_same_layers(name, layer_table(model), want)


def test_a_changed_group_count_is_caught():
    """The check is sharp: the same DCN-ODE with GroupNorm(d, d) in its fields (the
    kind of change a parameter count cannot see) fails against its table."""
    from jaxode.models.dcn import MODEL_SPECS
    from jaxode.nn.layers import PER_CHANNEL

    spec = MODEL_SPECS["dcn_ode"]
    swapped = spec._replace(norm={**spec.norm, "block": PER_CHANNEL})
    MODEL_SPECS["dcn_ode"] = swapped
    try:
        model = eqx.filter_eval_shape(lambda: build_model("dcn_ode", key=KEY))
    finally:
        MODEL_SPECS["dcn_ode"] = spec
    with pytest.raises(pytest.fail.Exception, match="groups: built 64, reference 32"):
        assert_same_layers("dcn_ode", layer_table(model), dcn_table(*DCN_MODELS["dcn_ode"]))


def test_layer_table_rejects_an_unknown_module():
    with pytest.raises(TypeError, match="no description for"):
        layer_table(eqx.filter_eval_shape(lambda: eqx.nn.MLP(2, 2, 4, 1, key=KEY)))
