"""DCN models (jaxode.models.dcn, jaxode.fields.dcn): parameter counts against the
paper's Table 1 / Table 5 layer lists, layout (spatial sizes), the trainer's call
contract, and a gradient step through the backsolve adjoint."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.fields.dcn import DCNField
from jaxode.models.dcn import (
    MODEL_NAMES,
    MODEL_SPECS,
    DCNClassifier,
    PAPER_PARAMS,
    DCNAutoencoder,
    build_model,
    centre_crop,
)
from jaxode.nn.srf import MetaSRFConv2d, SRFConv2d, refresh_support, srf_layers
from jaxode.ode import ODEBlock, SolveConfig, backward_nfe


def _shape_count(name):
    """Trainable scalars of a model built abstractly (no compilation): all float
    leaves minus the five scalars (t0, t1, rtol, atol, nfe_probe) of each ODE block."""
    model = eqx.filter_eval_shape(
        lambda k: DCNClassifier(name, key=k), jax.random.PRNGKey(0))
    leaves = [x for x in jax.tree_util.tree_leaves(model)
              if isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.floating)]
    blocks = [b for b in model.blocks if isinstance(b, ODEBlock)]
    return int(sum(np.prod(x.shape) for x in leaves)) - 5 * len(blocks)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_counts_match_paper(name):
    # Table 1: 429K, 326K, 472K, 560K, 555K, 426K, 323K; Table 5 meta models
    assert _shape_count(name) == PAPER_PARAMS[name]


def test_paper_counts_are_the_documented_ones():
    assert PAPER_PARAMS == {
        "dcn_ode": 428_752, "dcn_full": 325_843, "dcn_sigma_ji": 472_202,
        "dcn_sigma_t": 428_758, "dcn_sigma_t2": 428_764, "dcn_sigma_alpha_t": 689_494,
        "odenet": 559_562, "resnet_blocks": 554_634, "resnet_srf_blocks": 425_616,
        "resnet_srf_full": 322_707,
    }


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown DCN model"):
        build_model("dcn_bogus", key=jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def tiny_models():
    kw = dict(widths=(4, 8, 8), num_classes=3)
    abstract = eqx.filter_eval_shape(
        lambda k: DCNClassifier("resnet_blocks", key=k, **kw), jax.random.PRNGKey(1))
    return {"resnet_blocks": abstract,  # shapes suffice for the tests that use it
            "resnet_srf_full": build_model("resnet_srf_full", key=jax.random.PRNGKey(2), **kw)}


@pytest.mark.parametrize("name,sizes", [("resnet_blocks", (30, 15, 7)),
                                        ("resnet_srf_full", (32, 16, 8))])
def test_stage_sizes(tiny_models, name, sizes):
    model = tiny_models[name]
    x = jnp.zeros((2, 3, 32, 32), jnp.float32)
    feats, stats = eqx.filter_eval_shape(lambda m, x: m.features(x), model, x)
    assert [f.shape[-1] for f in feats] == list(sizes)
    assert [f.shape[1] for f in feats] == [4, 8, 8]
    assert stats == ()


def test_grid_modes_same_logits_resnet_srf(tiny_models):
    """The whole network gives the same logits with exact-size and max-size grids."""
    model = tiny_models["resnet_srf_full"]
    x = jax.random.uniform(jax.random.PRNGKey(3), (2, 3, 16, 16))
    f = eqx.filter_jit(lambda m, x: m(x)[0])
    a = f(refresh_support(model, "exact"), x)
    b = f(refresh_support(model, "max", max_half_width=6), x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert len(srf_layers(model)) == 3 + 6


def test_autoencoder_layout(tiny_models):
    enc = tiny_models["resnet_blocks"]
    ae = eqx.filter_eval_shape(lambda k: DCNAutoencoder(enc, key=k), jax.random.PRNGKey(5))
    x = jnp.zeros((2, 3, 32, 32), jnp.float32)
    y, aux = eqx.filter_eval_shape(lambda m, x: m(x), ae, x)
    assert y.shape == (2, 3, 28, 28) and centre_crop(x).shape == y.shape
    assert aux["nfe"].shape == (2,)


def test_field_sees_time_and_rejects_bad_kind():
    field = DCNField(4, "sigma_t", key=jax.random.PRNGKey(6))
    assert isinstance(field.conv1, MetaSRFConv2d) and field.conv1.in_channels == 4
    h = jax.random.normal(jax.random.PRNGKey(7), (4, 6, 6))
    f = eqx.filter_jit(field)
    assert float(jnp.abs(f(0.0, h) - f(1.5, h)).max()) > 1e-4
    with pytest.raises(ValueError, match="filter kind"):
        DCNField(4, "bogus", key=jax.random.PRNGKey(6))


def test_dcn_forward_contract():
    """The trainer's contract, checked abstractly (no compilation)."""
    cfg = SolveConfig(rtol=1e-2, atol=1e-2)
    model = eqx.filter_eval_shape(
        lambda k: DCNClassifier("dcn_sigma_alpha_t", widths=(4, 4, 4), num_classes=3,
                                config=cfg, key=k), jax.random.PRNGKey(8))
    x = jnp.zeros((2, 3, 10, 10), jnp.float32)
    logits, aux = eqx.filter_eval_shape(lambda m, x: m(x, key=None, inference=False), model, x)
    assert logits.shape == (2, 3)
    for k in ("nfe", "steps", "nfe_block1", "nfe_block2", "nfe_block3", "max_steps_reached"):
        assert aux[k].shape == (2,)
    assert "nfe_block4" not in aux
    assert all(isinstance(b, ODEBlock) for b in model.blocks)
    assert MODEL_SPECS["dcn_sigma_alpha_t"][4] == 2.0 and MODEL_SPECS["odenet"][4] == 1.0


@pytest.fixture(scope="module")
def dcn_block_step():
    """Loss, gradients and stats of one meta-parametrized DCN block (sigma(t), alpha(t))
    on [0, 2], dopri5, backsolve adjoint."""
    field = DCNField(4, "sigma_alpha_t", key=jax.random.PRNGKey(8))
    field = refresh_support(field, "max", max_half_width=4)
    block = ODEBlock(field, 0.0, 2.0, SolveConfig(rtol=1e-2, atol=1e-2))
    z0 = jax.random.normal(jax.random.PRNGKey(9), (2, 4, 8, 8))

    def loss_fn(b):
        z1, stats = b.batched(z0)
        return jnp.mean(z1 ** 2), stats

    return eqx.filter_jit(eqx.filter_value_and_grad(loss_fn, has_aux=True))(block)


def test_dcn_block_gradients_reach_scales_and_coefficients(dcn_block_step):
    (loss, stats), grads = dcn_block_step
    assert np.isfinite(float(loss)) and not bool(stats.max_steps_reached)
    assert float(backward_nfe(grads)) > 0
    metas = [lay for lay in srf_layers(grads) if isinstance(lay, MetaSRFConv2d)]
    assert len(metas) == 2
    for g in metas:
        assert np.all(np.isfinite(np.asarray(g.scale_coeffs)))
        assert float(jnp.abs(g.scale_coeffs).max()) > 0
        assert float(jnp.abs(g.alpha_bias).max()) > 0


def test_input_checks(tiny_models):
    with pytest.raises(ValueError, match="float batch"):
        tiny_models["resnet_srf_full"].features(jnp.zeros((3, 32, 32), jnp.uint8))
    assert isinstance(tiny_models["resnet_srf_full"].stem, SRFConv2d)
