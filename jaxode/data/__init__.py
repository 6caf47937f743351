"""Datasets: readers (IDX, image folders and zips, Tiny-ImageNet, TFDS), the embedded
digits default, a decoded-array cache, a batch iterator and on-device augmentation.

Entry points: `load_dataset(spec, split, root=..., cache_dir=...)` -> `Dataset`
(uint8 NHWC images, int32 labels) and `iterate_batches`.  Augmentation lives in
`jaxode.data.augment` (pure JAX functions with explicit keys).
"""

from jaxode.data.dataset import Dataset, iterate_batches
from jaxode.data.load import SPECS, load_classification, load_dataset

__all__ = ["Dataset", "iterate_batches", "load_dataset", "load_classification", "SPECS"]
