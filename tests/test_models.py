"""Classifier models: the papers' parameter counts, the calling convention, features,
dropout, and the residual block against a PyTorch reference."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.models import (
    PreActBlock,
    carrara_odeonly,
    carrara_resnet,
    carrara_resode,
    chen_odenet,
    chen_resnet,
    make_model,
    odeonly_net,
)
from jaxode.ode import SolveConfig
from jaxode.train import count_params, with_batch_mode


# Counts from the papers' released layer lists (shared/REFERENCE_FACTS.md).
@pytest.mark.parametrize(
    "factory, expected",
    [
        (carrara_resnet, 7_921_290),   # Carrara Table 1: 7.92M
        (carrara_resode, 2_023_562),   # 2.02M
        (carrara_odeonly, 1_201_930),  # 1.20M
        (chen_odenet, 208_266),        # torchdiffeq 'conv' down-sampling
        (chen_resnet, 576_778),
    ],
)
def test_param_counts(factory, expected, key):
    skeleton = eqx.filter_eval_shape(factory, key=key)  # shapes only: no weights drawn
    assert count_params(skeleton) == expected


def test_param_count_of_built_model_matches_skeleton(key):
    model = odeonly_net(10, in_channels=1, channels=8, key=key)
    n = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array)))
    # all inexact arrays minus the ODE block's t0, t1, rtol, atol and NFE probe
    assert count_params(model) == n - 5
    assert count_params(model) == count_params(eqx.filter_eval_shape(odeonly_net, 10,
                                                                      in_channels=1, channels=8,
                                                                      key=key))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        make_model("nope")


@pytest.fixture(scope="module")
def tiny_ode():
    return odeonly_net(10, in_channels=1, channels=8, stem_kernel=3, stem_stride=2,
                       stem_padding=1, dropout=0.0,
                       solve=SolveConfig(rtol=1e-4, atol=1e-4), key=jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.PRNGKey(2), (3, 1, 8, 8), jnp.float32)


@eqx.filter_jit
def _ode_outputs(model, images, ts):
    logits, aux = model(images, inference=True)
    feats_head = model.features(images, ts, through_head=True)
    feats = model.features(images, ts)
    z0 = jax.vmap(model.stem)(images)
    ps_logits, ps_aux = with_batch_mode(model, "per_sample")(images, inference=True)
    _, alone = model(images[1:2], inference=True)
    return logits, aux, feats_head, feats, z0, ps_logits, ps_aux, alone


@pytest.fixture(scope="module")
def ode_outputs(tiny_ode, images):
    return _ode_outputs(tiny_ode, images, jnp.array([0.0, 0.5, 1.0]))


def test_ode_model_call_and_features_agree(tiny_ode, ode_outputs):
    logits, aux, feats_head, feats, z0 = ode_outputs[:5]
    assert logits.shape == (3, 10)
    assert aux["nfe"].shape == (3,) and aux["steps"].shape == (3,)
    # joint mode: one solve, so every example reports the same count
    assert np.all(np.asarray(aux["steps"]) == np.asarray(aux["steps"])[0])
    # features through the head at t1 reproduce the logits (one dense-output solve)
    assert feats_head.shape == (3, 3, 8)
    relogits = jax.vmap(tiny_ode.head.linear)(feats_head[:, -1])
    np.testing.assert_allclose(relogits, logits, rtol=1e-4, atol=1e-5)
    # z(0) is the stem output: pooled features at t=0 are its spatial mean
    np.testing.assert_allclose(feats[:, 0], z0.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats[:, 0], feats[:, -1])


def test_per_sample_mode_gives_per_image_counts(ode_outputs):
    logits, _, _, _, _, ps_logits, ps_aux, alone = ode_outputs
    np.testing.assert_allclose(ps_logits, logits, rtol=1e-2, atol=1e-3)
    assert ps_aux["steps"].shape == (3,)
    # per-sample counts are those of a joint solve of that image alone
    assert int(ps_aux["steps"][1]) == int(alone["steps"][0])
    assert float(ps_aux["nfe"][1]) == float(alone["nfe"][0])
    # more steps never cost fewer evaluations
    order = np.argsort(np.asarray(ps_aux["steps"]))
    assert np.all(np.diff(np.asarray(ps_aux["nfe"])[order]) >= 0)


def test_resnet_features_are_block_outputs(key):
    model = chen_resnet(10, in_channels=1, channels=8, key=key)
    x = jax.random.uniform(key, (2, 1, 12, 12), jnp.float32)
    logits, aux, feats = eqx.filter_jit(
        lambda m, x: m(x, inference=True) + (m.features(x, through_head=True),))(model, x)
    assert feats.shape == (2, 6, 8)
    np.testing.assert_allclose(jax.vmap(model.head.linear)(feats[:, -1]), logits,
                               rtol=1e-4, atol=1e-5)
    assert float(jnp.sum(aux["nfe"])) == 0.0


def test_dropout_train_vs_inference(key):
    model = chen_resnet(10, in_channels=1, channels=8, dropout=0.5, key=key)
    x = jax.random.uniform(key, (4, 1, 12, 12), jnp.float32)
    call = eqx.filter_jit(lambda m, x, k, inference: m(x, key=k, inference=inference)[0])
    a = call(model, x, None, True)
    b = call(model, x, None, True)
    np.testing.assert_array_equal(a, b)
    c = call(model, x, jax.random.PRNGKey(5), False)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="dropout needs a PRNG key"):
        model(x, inference=False)


def test_wrong_input_shape_is_explained(tiny_ode):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        tiny_ode(jnp.zeros((2, 8, 8, 1)), inference=True)


def test_preact_block_matches_torch(key):
    torch = pytest.importorskip("torch")
    block = PreActBlock(8, 16, 2, key=key)
    x = np.asarray(jax.random.normal(key, (8, 9, 9)), np.float32)
    ours = np.asarray(block(jnp.asarray(x)))

    t = lambda a: torch.tensor(np.asarray(a))  # noqa: E731
    gn1 = torch.nn.GroupNorm(8, 8)
    gn2 = torch.nn.GroupNorm(16, 16)
    with torch.no_grad():
        gn1.weight.copy_(t(block.norm1.weight)); gn1.bias.copy_(t(block.norm1.bias))
        gn2.weight.copy_(t(block.norm2.weight)); gn2.bias.copy_(t(block.norm2.bias))
        xt = t(x)[None]
        a = torch.relu(gn1(xt))
        skip = torch.nn.functional.conv2d(a, t(block.shortcut.weight), stride=2)
        h = torch.nn.functional.conv2d(a, t(block.conv1.weight), stride=2, padding=1)
        h = torch.nn.functional.conv2d(torch.relu(gn2(h)), t(block.conv2.weight), padding=1)
        ref = (h + skip)[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
