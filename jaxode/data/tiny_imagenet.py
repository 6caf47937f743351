"""Tiny-ImageNet-200's validation split in its original layout.

Layout (a folder or a zip, possibly below one top folder ``tiny-imagenet-200/``)::

    wnids.txt                 200 WordNet ids, one a line; label = line index
    val/val_annotations.txt   tab-separated: file, wnid, x0, y0, x1, y1
    val/images/val_N.JPEG     64x64 JPEG, about 2% greyscale (replicated to RGB)

Used by the transfer experiment (Carrara et al., Sec. 4.3), which resizes 64 -> 32 to
match CIFAR-10 networks (`image_size=32`, Pillow bilinear with antialiasing).
"""

from __future__ import annotations

import os

import numpy as np

from jaxode.data.cache import cached
from jaxode.data.dataset import Dataset
from jaxode.data.folder import Source, decode_images

__all__ = ["read_tiny_imagenet_val", "load_tiny_imagenet_val"]


def _find_member(source: Source, suffix: str) -> str:
    hits = [n for n in source.names() if n == suffix or n.endswith("/" + suffix)]
    if not hits:
        raise ValueError(
            f"{source.path} does not look like Tiny-ImageNet-200: no {suffix} found "
            f"(expected the original layout tiny-imagenet-200/{suffix})."
        )
    return min(hits, key=len)


def read_tiny_imagenet_val(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Decode the validation split at `path` (folder or zip); `image_size` resizes."""
    source = Source(path)
    wnids_name = _find_member(source, "wnids.txt")
    ann_name = _find_member(source, "val/val_annotations.txt")
    prefix = ann_name[: -len("val/val_annotations.txt")]
    wnids = [w.strip() for w in source.read_bytes(wnids_name).decode().splitlines() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for lineno, line in enumerate(source.read_bytes(ann_name).decode().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{source.describe(ann_name)} line {lineno}: {line!r} does not name a wnid "
                f"from {wnids_name}."
            )
        files.append(prefix + "val/images/" + fields[0])
        labels.append(index[fields[1]])
    if not files:
        raise ValueError(f"{source.describe(ann_name)} lists no images.")
    present = set(source.names())
    missing = [f for f in files if f not in present]
    if missing:
        raise ValueError(
            f"{len(missing)} images listed in {source.describe(ann_name)} are missing, "
            f"e.g. {source.describe(missing[0])}."
        )
    images = decode_images(
        source, files, image_size=image_size, workers=workers,
        desc="decoding tiny-imagenet val", progress=progress,
    )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return Dataset(
        images=images,
        labels=np.asarray(labels, dtype=np.int32),
        num_classes=len(wnids),
        class_names=tuple(wnids),
        name="tiny-imagenet/val" + (f"@{image_size}" if image_size else ""),
    )


def load_tiny_imagenet_val(
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    cache_dir: str | None = None,
    workers: int | None = None,
) -> Dataset:
    """`read_tiny_imagenet_val` through the decoded-array cache."""
    return cached(
        lambda: read_tiny_imagenet_val(path, image_size=image_size, workers=workers),
        reader="tiny-imagenet",
        source=path,
        split="val",
        options={"image_size": image_size},
        cache_dir=cache_dir,
    )
