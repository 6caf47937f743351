"""`load_segmentation`: one entry point from a dataset name to segmentation splits.

``camvid`` is read by `jaxode.data.camvid` (and kept in the common cache of
`jaxode.data.cache`); ``synthetic`` is `jaxode.data.synthetic_seg`, generated from a
seed.  Both give ``{"train", "val", "test"}`` -> `SegSplit` (uint8 images (N, H, W, 3),
uint8 labels (N, H, W)) and the `Labels` the model and the metrics need.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxode.data import camvid, synthetic_seg
from jaxode.data.camvid import SegSplit

__all__ = ["Labels", "load_segmentation", "DATASETS"]

DATASETS = ("camvid", "synthetic")


class Labels(NamedTuple):
    """The label space of a segmentation set: class count, the label the loss and the
    metrics skip, and display colours by class index (the ignore label's last)."""

    num_classes: int
    ignore_label: int
    palette: np.ndarray


def _first_and_every(split: SegSplit, limit: int | None, factor: int) -> SegSplit:
    """The first `limit` examples (None: all), decimated by `factor` in both image axes
    (labels by nearest neighbour), for quick evaluation on the CPU."""
    n = len(split.images) if limit is None else limit
    return SegSplit(split.images[:n, ::factor, ::factor], split.labels[:n, ::factor, ::factor],
                    split.names[:n])


def load_segmentation(dataset: str, *, root: str | None = None, cache_dir: str | None = None,
                      seed: int = 0, n_train: int = 64, n_eval: int = 16,
                      size: tuple[int, int] = (64, 64), eval_limit: int | None = None,
                      eval_downscale: int = 1) -> tuple[dict[str, SegSplit], Labels]:
    """``(splits, labels)`` of `dataset`.

    - ``camvid``: from `root` (the zip or folder; default
      ``$JAXODE_DATA/camvid-segnet.zip``); the val and test splits cut to their first
      `eval_limit` images and decimated by `eval_downscale`.
    - ``synthetic``: `n_train` training and `n_eval` val / test images of `size`,
      generated from `seed`.
    """
    if dataset == "synthetic":
        splits = synthetic_seg.load_synthetic(n_train, n_eval, n_eval, tuple(size), seed)
        return splits, Labels(synthetic_seg.NUM_CLASSES, synthetic_seg.IGNORE_LABEL,
                              synthetic_seg.PALETTE)
    if dataset != "camvid":
        raise ValueError(f"unknown segmentation dataset {dataset!r}; choose one of "
                         f"{', '.join(DATASETS)}.")
    splits = camvid.load_camvid(root, cache_dir=cache_dir)
    for s in ("val", "test"):
        splits[s] = _first_and_every(splits[s], eval_limit, eval_downscale)
    return splits, Labels(camvid.NUM_CLASSES, camvid.IGNORE_LABEL, camvid.PALETTE)
