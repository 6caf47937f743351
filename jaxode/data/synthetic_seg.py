"""An embedded synthetic segmentation set (no download): generated shapes on textured
backgrounds, for smoke runs and tests of the SegNode pipeline.

Classes: 0 background, 1 disc, 2 rectangle, 3 triangle; label 4 is the ignore label,
drawn as a 1-pixel ring around every disc (a stand-in for CamVid's void borders).
Each shape has a class-specific mean colour plus per-image jitter and pixel noise, so
colour alone nearly separates the classes and shape helps at the margins.  Everything
is generated with NumPy from a seed, so a split is identical on every machine.
"""

from __future__ import annotations

import numpy as np

from jaxode.data.camvid import SegSplit

NUM_CLASSES = 4
IGNORE_LABEL = 4
CLASSES = ("background", "disc", "rectangle", "triangle")
PALETTE = np.array([(40, 40, 40), (220, 60, 60), (60, 200, 80), (70, 90, 230), (0, 0, 0)],
                   np.uint8)
_BASE = np.array([(110, 110, 100), (200, 80, 70), (80, 180, 90), (80, 100, 210)], np.float32)


def make_split(n: int, size: tuple[int, int] = (64, 64), seed: int = 0,
               shapes_per_image: tuple[int, int] = (2, 5)) -> SegSplit:
    """`n` images of `size` (H, W): uint8 (n, H, W, 3) images, uint8 (n, H, W) labels."""
    if n < 1:
        raise ValueError(f"synthetic_seg: n must be positive, got {n}.")
    h, w = size
    if h < 8 or w < 8:
        raise ValueError(f"synthetic_seg: size must be at least 8x8, got {size}.")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = np.empty((n, h, w, 3), np.uint8)
    labels = np.empty((n, h, w), np.uint8)
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        ignore = np.zeros((h, w), bool)
        for _ in range(rng.integers(shapes_per_image[0], shapes_per_image[1] + 1)):
            cls = int(rng.integers(1, NUM_CLASSES))
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.08, 0.22) * min(h, w)
            if cls == 1:
                d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
                mask = d <= r
                ring = (d > r) & (d <= r + 1.0)
            elif cls == 2:
                ry, rx = r * rng.uniform(0.5, 1.0), r * rng.uniform(0.8, 1.5)
                mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
                ring = None
            else:  # upward triangle with apex at (cy - r, cx)
                top = cy - r
                depth = (yy - top) / (2 * r)
                mask = (depth >= 0) & (depth <= 1) & (np.abs(xx - cx) <= depth * r)
                ring = None
            lab[mask] = cls
            ignore[mask] = False
            if ring is not None:
                ignore |= ring & ~mask
        colour = _BASE[lab] + rng.normal(0, 12, size=(1, 1, 3)).astype(np.float32)
        stripes = 15.0 * np.sin(xx / rng.uniform(2, 6) + yy / rng.uniform(3, 9))[..., None]
        colour = colour + np.where(lab[..., None] == 0, stripes, 0.0)
        colour = colour + rng.normal(0, 10, size=colour.shape)
        images[i] = np.clip(colour, 0, 255).astype(np.uint8)
        lab = lab.copy()
        lab[ignore] = IGNORE_LABEL
        labels[i] = lab
    return SegSplit(images, labels, tuple(f"synthetic_{seed}_{i:04d}" for i in range(n)))


def load_synthetic(n_train: int = 64, n_val: int = 16, n_test: int = 16,
                   size: tuple[int, int] = (64, 64), seed: int = 0) -> dict[str, SegSplit]:
    """Train / val / test splits with different seeds (the same layout as `load_camvid`)."""
    return {
        "train": make_split(n_train, size, seed),
        "val": make_split(n_val, size, seed + 1),
        "test": make_split(n_test, size, seed + 2),
    }
