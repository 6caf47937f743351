"""On-device augmentation: numpy references and identities (crop = a window of the
zero-padded image, flip is an involution, fixed key -> fixed output)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxode.data.augment import (
    channel_stats,
    color_jitter,
    normalize,
    random_crop,
    random_flip,
    to_model_input,
)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    # Distinct random values make every window of the padded image unique.
    return rng.integers(1, 256, (64, 6, 5, 3), dtype=np.uint8)


def test_random_crop_matches_a_window_of_the_padded_image(batch):
    p = 2
    out = np.asarray(random_crop(jax.random.PRNGKey(0), jnp.asarray(batch), p))
    assert out.shape == batch.shape and out.dtype == np.uint8
    padded = np.pad(batch, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = []
    for i in range(len(batch)):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(padded[i, dy : dy + 6, dx : dx + 5], out[i])
        ]
        assert len(hits) == 1, f"image {i}: output is not one window of the padded image"
        offsets.append(hits[0])
    offsets = np.array(offsets)
    # Bounds, and all extreme offsets occur across 64 images (25 possibilities).
    assert offsets.min() == 0 and offsets.max() == 2 * p
    assert len({tuple(o) for o in offsets}) > 10
    assert np.array_equal(np.asarray(random_crop(jax.random.PRNGKey(0), batch, 0)), batch)


def test_random_flip_involution_and_determinism(batch):
    k = jax.random.PRNGKey(3)
    x = jnp.asarray(batch)
    once = np.asarray(random_flip(k, x))
    flipped = np.array([np.array_equal(o, b[:, ::-1]) for o, b in zip(once, batch)])
    same = np.array([np.array_equal(o, b) for o, b in zip(once, batch)])
    assert np.all(flipped ^ same)  # each image either mirrored or untouched
    assert 16 <= flipped.sum() <= 48
    assert np.array_equal(np.asarray(random_flip(k, once)), batch)  # same key twice = identity
    assert np.array_equal(np.asarray(random_flip(k, x)), once)
    assert not np.array_equal(np.asarray(random_flip(jax.random.PRNGKey(4), x)), once)


def test_color_jitter_properties(batch):
    k = jax.random.PRNGKey(1)
    x = jnp.asarray(batch)
    assert np.array_equal(np.asarray(color_jitter(k, x, 0.0, 0.0, 0.0)), batch)
    a = np.asarray(color_jitter(k, x, 0.4, 0.4, 0.4))
    assert a.dtype == np.uint8 and np.array_equal(a, np.asarray(color_jitter(k, x, 0.4, 0.4, 0.4)))
    assert not np.array_equal(a, np.asarray(color_jitter(jax.random.PRNGKey(2), x, 0.4, 0.4, 0.4)))
    # Brightness only: one factor per image within [0.6, 1.4] (where nothing clips).
    xf = jnp.asarray(batch, jnp.float32) / 255.0 * 0.5
    b = np.asarray(color_jitter(k, xf, brightness=0.4))
    ratio = b / np.asarray(xf)
    assert np.allclose(ratio, ratio[:, :1, :1, :1], atol=1e-5)
    assert ratio.min() >= 0.6 - 1e-6 and ratio.max() <= 1.4 + 1e-6
    # Saturation leaves a grey image unchanged (grey(x) == x there).
    grey = jnp.repeat(xf[..., :1], 3, axis=-1)
    assert np.allclose(np.asarray(color_jitter(k, grey, saturation=0.9)), np.asarray(grey), atol=1e-6)
    # Contrast keeps the mean grey level (for a mid-range image where nothing clips).
    c = np.asarray(color_jitter(k, xf + 0.25, contrast=0.5))
    g = lambda v: v @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(g(c).mean(axis=(1, 2)), g(np.asarray(xf + 0.25)).mean(axis=(1, 2)), atol=1e-5)


def test_to_model_input_and_normalize(batch):
    m = np.asarray(to_model_input(jnp.asarray(batch)))
    assert m.dtype == np.float32 and m.shape == (64, 3, 6, 5)
    assert np.allclose(m, batch.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    mean, std = channel_stats(batch)
    ref_mean = (batch / 255.0).mean(axis=(0, 1, 2))
    ref_std = (batch / 255.0).std(axis=(0, 1, 2))
    assert np.allclose(mean, ref_mean) and np.allclose(std, ref_std)
    n = np.asarray(normalize(jnp.asarray(m), mean, std))
    assert np.allclose(n.mean(axis=(0, 2, 3)), 0, atol=1e-5) and np.allclose(n.std(axis=(0, 2, 3)), 1, atol=1e-4)
    with pytest.raises(ValueError, match=r"one value per channel \(3\)"):
        normalize(jnp.asarray(m), (0.5,), (0.5,))
    with pytest.raises(TypeError, match="expects uint8"):
        to_model_input(jnp.asarray(m).transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        random_flip(jax.random.PRNGKey(0), jnp.asarray(batch[0]))


def test_augment_under_jit_matches_eager(batch):
    @jax.jit
    def aug(key, x):
        k1, k2 = jax.random.split(key)
        return to_model_input(random_flip(k2, random_crop(k1, x, 4)))

    k = jax.random.PRNGKey(7)
    k1, k2 = jax.random.split(k)
    eager = to_model_input(random_flip(k2, random_crop(k1, jnp.asarray(batch), 4)))
    assert np.array_equal(np.asarray(aug(k, jnp.asarray(batch))), np.asarray(eager))
