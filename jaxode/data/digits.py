"""scikit-learn's bundled 8x8 handwritten digits: the embedded default dataset.

It ships inside scikit-learn, so it needs no download and no data folder: 1,797 grey
images of 8x8 pixels with values 0..16, ten classes.  They are scaled to 0..255
(``round(v * 255 / 16)``) and split once, stratified by class with a fixed seed, into
1,437 training and 360 test images.
"""

from __future__ import annotations

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = ["load_digits", "DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED"]

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def load_digits(split: str) -> Dataset:
    """The digits `split` ("train": 1,437 images, "test": 360), uint8 (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', got split={split!r}.")
    bunch = sk_load_digits()
    x = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), 0..16
    images = np.round(x * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int32)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    idx = np.sort(idx_train if split == "train" else idx_test)
    return Dataset(
        images=np.ascontiguousarray(images[idx]),
        labels=labels[idx],
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        name=f"digits/{split}",
    )
