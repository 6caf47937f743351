"""The 'tfds:' source against tensorflow-datasets' own mock data (skipped when the
optional tensorflow-datasets / TensorFlow pair is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jaxode.data import load_dataset  # noqa: E402


def test_tfds_mock_mnist_roundtrip(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        ds = load_dataset("tfds:mnist", "train", root=str(tmp_path))
        ref = list(tfds.as_numpy(tfds.load("mnist", split="train", data_dir=str(tmp_path))))
    ref = {k: np.stack([ex[k] for ex in ref]) for k in ("image", "label")}
    assert ds.images.shape == (12, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
    # The mock generator is seeded: a second load gives the same arrays as tfds itself.
    assert np.array_equal(ds.images, ref["image"]) and np.array_equal(ds.labels, ref["label"])
    assert ds.labels.min() >= 0 and ds.labels.max() < 10
