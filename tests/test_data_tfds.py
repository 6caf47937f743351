"""The tfds sources (classification and segmentation) against tensorflow-datasets' own
mock data.  The `test` extra installs tensorflow-datasets and TensorFlow, so CI runs
these; elsewhere they skip when the pair is missing."""

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


def _nearest(mask: np.ndarray, size) -> np.ndarray:
    """Nearest-neighbour resampling by pixel centres, in float64 (exact at these sizes):
    out[i, j] = in[floor((i + 0.5) * h / H), floor((j + 0.5) * w / W)]."""
    h, w = mask.shape[:2]
    rows = np.floor((np.arange(size[0]) + 0.5) * h / size[0]).astype(int)
    cols = np.floor((np.arange(size[1]) + 0.5) * w / size[1]).astype(int)
    return mask[rows][:, cols]


def test_tfds_mock_segmentation(tmp_path):
    """oxford_iiit_pet's mock examples have random image and mask sizes (each its own):
    without size= the loader refuses them, with it every example is resized."""
    import tensorflow as tf

    from jaxode.data.tfds_source import load_tfds_segmentation

    size = (24, 20)
    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(ValueError, match=r"pass size=\(H, W\)"):
            load_tfds_segmentation("oxford_iiit_pet", "train", data_dir=str(tmp_path))
        seg = load_tfds_segmentation("oxford_iiit_pet", "train", size=size, data_dir=str(tmp_path))
        ref = list(tfds.as_numpy(tfds.load("oxford_iiit_pet", split="train",
                                           data_dir=str(tmp_path))))
    assert seg.images.shape == (6, *size, 3) and seg.images.dtype == np.uint8
    assert seg.labels.shape == (6, *size) and seg.labels.dtype == np.uint8
    assert seg.names == tuple(ex["file_name"].decode() for ex in ref)
    for i, ex in enumerate(ref):
        np.testing.assert_array_equal(seg.labels[i], _nearest(ex["segmentation_mask"][..., 0], size))
        # the image against TensorFlow's own bilinear resize (a different implementation:
        # equal up to rounding and filter details on these random pixels)
        want = tf.image.resize(ex["image"], size, method="bilinear", antialias=True).numpy()
        diff = np.abs(seg.images[i].astype(np.float32) - want)
        assert diff.mean() < 4.0, diff.mean()
