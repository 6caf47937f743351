"""Data augmentation as pure JAX functions on a batch of NHWC images, run on device.

Each random function takes an explicit PRNG key and draws independent parameters per
image (one `jax.random.split` per image), so the result is a deterministic function of
(key, images) and can sit inside a jitted training step.  The random ops keep the
input dtype, so a pipeline can stay uint8 until `to_model_input`::

    x = random_crop(k1, batch_uint8, padding=4)       # (N, H, W, C) uint8
    x = random_flip(k2, x)
    x = to_model_input(x)                             # (N, C, H, W) float32 in [0, 1]
    x = normalize(x, mean, std)                       # per channel (axis -3)

These are the standard CIFAR-10 augmentations of the ResNet / ODE-Net papers (Carrara
et al., Sec. 4: zero-padding by 4, random 32x32 crop, horizontal flip).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Shaped

__all__ = [
    "random_crop",
    "random_flip",
    "color_jitter",
    "normalize",
    "to_model_input",
    "channel_stats",
]


def _check_nhwc(images, fn: str) -> None:
    if images.ndim != 4:
        raise ValueError(
            f"{fn} takes a batch of images of shape (N, H, W, C), got shape {images.shape}."
        )


def random_crop(
    key: PRNGKeyArray, images: Shaped[Array, "n h w c"], padding: int
) -> Shaped[Array, "n h w c"]:
    """Zero-pad each image by `padding` pixels on every side, then cut out an H x W
    window at an offset (dy, dx) drawn uniformly from {0, ..., 2 * padding} per image.

    Offset (padding, padding) returns the image unchanged.
    """
    _check_nhwc(images, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop padding must be >= 0, got {padding}.")
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: PRNGKeyArray, images: Shaped[Array, "n h w c"]) -> Shaped[Array, "n h w c"]:
    """Mirror each image left-right with probability 1/2 (independently per image)."""
    _check_nhwc(images, "random_flip")
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _grey(x):
    # ITU-R 601 luma, as torchvision's rgb_to_grayscale.
    if x.shape[-1] == 1:
        return x
    wts = jnp.asarray([0.299, 0.587, 0.114], dtype=x.dtype)
    return jnp.sum(x * wts, axis=-1, keepdims=True)


def color_jitter(
    key: PRNGKeyArray,
    images: Shaped[Array, "n h w c"],
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> Shaped[Array, "n h w c"]:
    """Random brightness, contrast and saturation, one factor of each per image.

    With x in [0, 1] and factors b, k, s drawn uniformly from [1 - brightness,
    1 + brightness] etc. (applied in that order, then clipped to [0, 1]):
    brightness x <- b x; contrast x <- k x + (1 - k) mean(grey(x));
    saturation x <- s x + (1 - s) grey(x).  uint8 input is scaled to [0, 1] and
    returned as uint8 (rounded); float input must already be in [0, 1].
    """
    _check_nhwc(images, "color_jitter")
    for nm, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"color_jitter {nm} must be in [0, 1], got {v}.")
    is_int = jnp.issubdtype(images.dtype, jnp.integer)
    x = images.astype(jnp.float32) / 255.0 if is_int else images
    n = x.shape[0]
    kb, kc, ks = jax.random.split(key, 3)

    def factor(k, amount):
        return jax.random.uniform(
            k, (n, 1, 1, 1), dtype=x.dtype, minval=1.0 - amount, maxval=1.0 + amount
        )

    one = jnp.asarray(1.0, x.dtype)
    if brightness:
        x = jnp.clip(x * factor(kb, brightness), 0.0, 1.0)
    if contrast:
        k = factor(kc, contrast)
        m = jnp.mean(_grey(x), axis=(1, 2, 3), keepdims=True)
        x = jnp.clip(k * x + (one - k) * m, 0.0, 1.0)
    if saturation:
        s = factor(ks, saturation)
        x = jnp.clip(s * x + (one - s) * _grey(x), 0.0, 1.0)
    if is_int:
        return jnp.round(x * 255.0).astype(images.dtype)
    return x


def normalize(
    images: Float[Array, "..."],
    mean: Sequence[float] | Float[Array, " c"],
    std: Sequence[float] | Float[Array, " c"],
    *,
    channel_axis: int = -3,
) -> Float[Array, "..."]:
    """(x - mean) / std per channel; channel axis -3 fits (N, C, H, W) and (C, H, W)."""
    mean = jnp.asarray(mean, dtype=images.dtype)
    std = jnp.asarray(std, dtype=images.dtype)
    c = images.shape[channel_axis]
    if mean.shape != (c,) or std.shape != (c,):
        raise ValueError(
            f"normalize: mean and std need one value per channel ({c}), got shapes "
            f"{mean.shape} and {std.shape}."
        )
    shape = [1] * images.ndim
    shape[channel_axis] = c
    return (images - mean.reshape(shape)) / std.reshape(shape)


def to_model_input(images: Shaped[Array, "n h w c"]) -> Float[Array, "n c h w"]:
    """uint8 NHWC -> float32 NCHW in [0, 1] (x / 255), the models' input layout."""
    _check_nhwc(images, "to_model_input")
    x = jnp.asarray(images)
    if x.dtype != jnp.uint8:
        raise TypeError(f"to_model_input expects uint8 images, got dtype {x.dtype}.")
    return jnp.transpose(x, (0, 3, 1, 2)).astype(jnp.float32) / jnp.float32(255.0)


def channel_stats(images_uint8) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images on the [0, 1] scale (numpy, host)."""
    import numpy as np

    x = np.asarray(images_uint8)
    n_pix = x.shape[0] * x.shape[1] * x.shape[2]
    s1 = x.reshape(-1, x.shape[-1]).sum(axis=0, dtype=np.float64) / 255.0
    s2 = (x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0) ** 2
    mean = s1 / n_pix
    var = s2.sum(axis=0) / n_pix - mean**2
    return tuple(float(m) for m in mean), tuple(float(v) for v in np.sqrt(np.maximum(var, 0.0)))
