"""Transfer features and linear classifiers: dense-output features against separate
solves and against the block's own input/output, SVM reproducibility and sanity."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode import transfer as tr
from jaxode.data.augment import to_model_input
from jaxode.models.classifiers import odeonly_net
from jaxode.ode import ODEBlock, SolveConfig

TOL = 1e-6


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ode_model():
    solve = SolveConfig(solver="dopri5", rtol=TOL, atol=TOL)
    import equinox as eqx

    model = odeonly_net(5, channels=4, stem_kernel=3, stem_stride=1, stem_padding=1,
                        solve=solve, dropout=0.0, key=jax.random.PRNGKey(1))
    # Larger field weights than at initialisation, so that the pooled state moves.
    field = jax.tree_util.tree_map(lambda a: a * 3.0 if eqx.is_inexact_array(a) else a,
                                   model.ode.field)
    # The field ends in a per-channel GroupNorm, whose output has zero spatial mean per
    # channel unless its bias is non-zero (as after training): set one, so that the
    # pooled features move along the trajectory.
    field = eqx.tree_at(lambda f: f.norm3.bias, field,
                        jax.random.normal(jax.random.PRNGKey(3), field.norm3.bias.shape))
    return eqx.tree_at(lambda m: m.ode.field, model, field)


@pytest.fixture(scope="module")
def ode_features(ode_model, images):
    return tr.extract_features(ode_model, images, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def separate(ode_model, images):
    """Independent reference: pooled z0 = stem(x), and z(t) from a fresh solve over
    [0, t] (one compile, t traced)."""
    x = to_model_input(jnp.asarray(images))

    @jax.jit
    def solve_to(t):
        z0 = jax.vmap(ode_model.stem)(x)
        block = ODEBlock(ode_model.ode.field, 0.0, t, ode_model.ode.config)
        zt, _ = block.batched(z0)
        return z0.mean(axis=(2, 3)), zt.mean(axis=(2, 3))

    return lambda t: tuple(np.asarray(a) for a in solve_to(jnp.float32(t)))


def test_ode_feature_shapes_and_endpoints(ode_model, ode_features, separate):
    assert ode_features.shape == (4, 21, 4) and ode_features.dtype == np.float32
    assert np.allclose(tr.feature_times(ode_model), np.linspace(0, 1, 21))
    z0, z1 = separate(1.0)
    # z(0) is the block input and z(1) the block output (pooled over space).
    assert np.allclose(ode_features[:, 0], z0, atol=1e-6)
    assert np.allclose(ode_features[:, -1], z1, atol=1e-5)
    # The trajectory moves: z(1) differs from z(0).
    assert np.abs(ode_features[:, -1] - ode_features[:, 0]).max() > 1e-2


def test_dense_output_equals_separate_solves(ode_features, separate):
    for i in (5, 13):  # t = 0.25, 0.65
        _, sep = separate(tr.ODE_TIMES[i])
        assert np.abs(ode_features[:, i] - sep).max() <= 1e-4 * max(np.abs(sep).max(), 1.0)
        # ... and is not trivially equal to the endpoints.
        assert np.abs(ode_features[:, i] - ode_features[:, -1]).max() > 1e-3


def test_resnet_features_are_last_seven_blocks(images):
    from jaxode.models.classifiers import Head, PreActBlock, ResNetClassifier, Sequence
    import equinox as eqx

    keys = jax.random.split(jax.random.PRNGKey(2), 10)
    blocks = tuple(PreActBlock(4, 4, 1, key=k) for k in keys[:8])  # 8 blocks: last 7 used
    stem = Sequence((eqx.nn.Conv2d(3, 4, 3, 1, 1, key=keys[8]),))
    model = ResNetClassifier(stem, blocks, Head(4, 5, 0.0, key=keys[9]), 3)
    f = tr.extract_features(model, images, batch_size=4, progress=False)
    assert f.shape == (4, 7, 4)
    assert np.allclose(tr.feature_times(model), np.linspace(0, 1, 7))
    # Independent path: run the blocks one by one, eagerly, and pool each output.
    h = jax.vmap(stem)(to_model_input(jnp.asarray(images)))
    outs = []
    for b in blocks:
        h = jax.vmap(b)(h)
        outs.append(np.asarray(h.mean(axis=(2, 3))))
    assert np.allclose(f, np.stack(outs[1:], axis=1), atol=1e-5)


def test_feature_cache_hits_and_follows_weights(ode_model, images, tmp_path, monkeypatch):
    calls = []
    real = tr.extract_features

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tr, "extract_features", counting)
    a = tr.cached_features(str(tmp_path), ode_model, images, data_key="x", batch_size=4, progress=False)
    b = tr.cached_features(str(tmp_path), ode_model, images, data_key="x", batch_size=4, progress=False)
    assert len(calls) == 1 and np.array_equal(a, b)
    changed = jax.tree_util.tree_map(lambda v: v, ode_model)
    changed = eqx_set_bias(changed)
    assert tr.model_fingerprint(changed) != tr.model_fingerprint(ode_model)
    with pytest.raises(ValueError, match="feature times must increase"):
        tr.extract_features(ode_model, images, ts=(0.5, 0.2), progress=False)


def eqx_set_bias(model):
    import equinox as eqx

    conv = model.stem.layers[0]
    return eqx.tree_at(lambda m: m.stem.layers[0].bias, model, conv.bias + 1.0)


def test_svm_cv_reproducible_and_sane():
    rng = np.random.default_rng(0)
    n_per, k, d = 30, 3, 6
    centers = rng.normal(0, 3, (k, d))
    X = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centers])
    y = np.repeat(np.arange(k), n_per)
    r1 = tr.svm_cv(X, y, seed=0, n_jobs=1)
    r2 = tr.svm_cv(X, y, seed=0, n_jobs=1)
    assert r1["best_C"] == r2["best_C"] and r1["cv_accuracy"] == r2["cv_accuracy"]
    assert r1["cv_accuracy_per_C"] == r2["cv_accuracy_per_C"]
    assert r1["cv_accuracy"] == max(r1["cv_accuracy_per_C"].values())
    assert r1["cv_accuracy"] > 0.9 and r1["dual"] is False  # 90 samples > 6 features
    # Labels that carry no information: chance level (3 classes).
    r3 = tr.svm_cv(X, rng.permutation(y), seed=0, n_jobs=1)
    assert r3["cv_accuracy"] < 0.6
    # More features than samples -> the dual problem.
    assert tr.svm_cv(X[:, :6].repeat(20, axis=1), y, Cs=(1.0,), n_jobs=1)["dual"] is True


def test_linear_probe_learns_separable_classes():
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 3, (4, 5))
    X = np.concatenate([c + rng.normal(0, 0.5, (50, 5)) for c in centers])
    y = np.repeat(np.arange(4), 50)
    idx = rng.permutation(200)
    tr_i, va_i = idx[:150], idx[150:]
    r = tr.linear_probe(X[tr_i], y[tr_i], X[va_i], y[va_i], num_classes=4, epochs=30,
                        batch_size=50, lr=0.05)
    assert r["val_accuracy"] > 0.95 and r["train_loss"] < 0.3
    sub = tr.stratified_subset(np.repeat(np.arange(5), 10), classes=3, per_class=4, seed=0)
    assert len(sub) == 12 and np.bincount(np.repeat(np.arange(5), 10)[sub]).tolist() == [4, 4, 4]


@pytest.mark.parametrize("with_ema", [False, True])
def test_load_run_reads_model_and_ema_from_a_checkpoint(tmp_path, with_ema):
    import json

    import equinox as eqx

    from jaxode.train import load_run
    from jaxode.models.classifiers import make_model
    from jaxode.ode import trainable
    from jaxode.train import save_checkpoint

    kwargs = {"num_classes": 3, "channels": 4}
    trained = make_model("chen-odenet", key=jax.random.PRNGKey(7), **kwargs)  # != template key 0
    params = jax.tree_util.tree_leaves(eqx.filter(trained, trainable(trained)))
    ema = [p + 1.0 for p in params] if with_ema else None
    momentum = [p * 0.0 + 5.0 for p in params]
    (tmp_path / "config.json").write_text(json.dumps({"model": "chen-odenet", "model_kwargs": kwargs}))
    save_checkpoint(str(tmp_path / "checkpoints"), 3,
                    {"model": trained, "opt_state": momentum, "ema": ema},
                    {"config": {"ema_decay": 0.999 if with_ema else None}})
    run = load_run(str(tmp_path))
    model, name, norm = run.model, run.name, run.norm
    assert norm is None
    assert name == "chen-odenet"
    got = jax.tree_util.tree_leaves(eqx.filter(model, trainable(model)))
    want = ema if with_ema else params
    assert len(got) == len(want)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got, want))


def test_truncated_classifier_sees_the_feature_at_t(ode_model, ode_features, images):
    """The fine-tune network cut at t* computes, before its new head, exactly the state
    whose pooled value the feature extractor returns at t* (ODE: z(t*) from a solve
    ending at t*; ResNet: the output of the block placed at t*)."""
    import equinox as eqx

    from jaxode.models.classifiers import Head, PreActBlock, ResNetClassifier, Sequence

    x = to_model_input(jnp.asarray(images))
    cut = tr.truncated_classifier(ode_model, 0.25, 7, key=jax.random.PRNGKey(0))
    assert float(cut.ode.t1) == pytest.approx(0.25)
    assert cut.head.linear.out_features == 7
    z, _ = cut.ode.batched(jax.vmap(cut.stem)(x))
    assert np.abs(np.asarray(z.mean(axis=(2, 3))) - ode_features[:, 5]).max() <= 1e-4
    logits, _ = cut(x, inference=True)
    assert logits.shape == (4, 7)
    with pytest.raises(ValueError, match="t must lie in"):
        tr.truncated_classifier(ode_model, 0.0, 7, key=jax.random.PRNGKey(0))

    keys = jax.random.split(jax.random.PRNGKey(2), 10)
    blocks = tuple(PreActBlock(4, 4, 1, key=k) for k in keys[:8])
    stem = Sequence((eqx.nn.Conv2d(3, 4, 3, 1, 1, key=keys[8]),))
    resnet = ResNetClassifier(stem, blocks, Head(4, 5, 0.0, key=keys[9]), 3)
    f = tr.extract_features(resnet, images, batch_size=4, progress=False)
    cut = tr.truncated_classifier(resnet, 1.0 / 3.0, 9, key=jax.random.PRNGKey(0))
    # 8 blocks, features from the last 7 (blocks 2..8): t = 1/3 is the third of them.
    assert len(cut.blocks) == 4
    assert np.allclose(np.asarray(cut.features(x))[:, -1], f[:, 2], atol=1e-5)
    with pytest.raises(ValueError, match="features only at t in"):
        tr.truncated_classifier(resnet, 0.4, 9, key=jax.random.PRNGKey(0))


def test_cached_svm_cv_repeats_no_grid_search(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    X = np.concatenate([c + rng.normal(0, 1, (20, 4)) for c in rng.normal(0, 3, (3, 4))])
    y = np.repeat(np.arange(3), 20)
    direct = tr.svm_cv(X, y, Cs=(0.1, 1.0), folds=3, n_jobs=1)
    first = tr.cached_svm_cv(str(tmp_path), X, y, Cs=(0.1, 1.0), folds=3, n_jobs=1)
    assert "model" not in first
    assert first["cv_accuracy_per_C"] == direct["cv_accuracy_per_C"]
    monkeypatch.setattr(tr, "svm_cv", lambda *a, **k: pytest.fail("grid search repeated"))
    again = tr.cached_svm_cv(str(tmp_path), X, y, Cs=(0.1, 1.0), folds=3, n_jobs=2)
    assert again == first
    # Other labels or other settings are other entries.
    monkeypatch.undo()
    other = tr.cached_svm_cv(str(tmp_path), X, rng.permutation(y), Cs=(0.1, 1.0), folds=3, n_jobs=1)
    assert len(list(tmp_path.glob("svm-*.json"))) == 2 and other != first


def test_model_fingerprint_is_the_same_in_another_process(ode_model):
    """The feature cache must hit across runs: the fingerprint of the same weights may
    not depend on object addresses of the process."""
    import subprocess
    import sys
    import tempfile

    import equinox as eqx

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/m.eqx"
        eqx.tree_serialise_leaves(path, ode_model)
        code = (
            "import jax, equinox as eqx\n"
            "from jaxode import transfer as tr\n"
            "from jaxode.models.classifiers import odeonly_net\n"
            "from jaxode.ode import SolveConfig\n"
            f"m = odeonly_net(5, channels=4, stem_kernel=3, stem_stride=1, stem_padding=1, "
            f"solve=SolveConfig(solver='dopri5', rtol={TOL}, atol={TOL}), dropout=0.0, "
            "key=jax.random.PRNGKey(1))\n"
            f"print(tr.model_fingerprint(eqx.tree_deserialise_leaves({path!r}, m)))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert out == tr.model_fingerprint(ode_model)
