"""MNIST in its original IDX format (LeCun et al.), gzipped or not.

An IDX file starts with a magic number ``0x0000TTDD`` (TT: element type, 0x08 for
unsigned bytes; DD: number of dimensions), then DD big-endian uint32 sizes, then the
data in C order.  Images are ``idx3`` (N, 28, 28), labels ``idx1`` (N,).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = ["read_idx", "load_mnist", "MNIST_FILES"]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (``.gz`` decompressed on the fly).

    Raises `ValueError` naming the file when the magic number is wrong, the element type
    is not uint8, the dimension count is not `expect_ndim`, or the data length does not
    match the header's sizes (a truncated or padded file).
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"Could not read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is too short ({len(raw)} bytes) to hold a header.")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(
            f"IDX file {path} has magic number 0x{raw[:4].hex()}, expected 0x000008DD "
            f"(unsigned bytes); it is not an uncompressed IDX file of uint8 data."
        )
    if expect_ndim is not None and ndim != expect_ndim:
        raise ValueError(
            f"IDX file {path} has {ndim} dimensions (magic 0x{raw[:4].hex()}), "
            f"expected {expect_ndim}."
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header.")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        raise ValueError(
            f"IDX file {path}: header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {got} bytes; it is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def load_mnist(folder: str | os.PathLike, split: str) -> Dataset:
    """MNIST `split` ("train" or "test") from the four IDX files in `folder`.

    Returns uint8 images (N, 28, 28, 1) and int32 labels.
    """
    folder = os.fspath(folder)
    if split not in MNIST_FILES:
        raise ValueError(f"mnist has splits 'train' and 'test', got split={split!r}.")
    img_stem, lbl_stem = MNIST_FILES[split]
    paths = []
    for stem in (img_stem, lbl_stem):
        p = _find(folder, stem)
        if p is None:
            raise FileNotFoundError(
                f"MNIST file {stem}[.gz] not found in {os.path.abspath(folder)}; pass root= "
                f"(--data-root) pointing at the folder with the IDX files, or set JAXODE_DATA "
                f"to a folder containing mnist/."
            )
        paths.append(p)
    images = read_idx(paths[0], expect_ndim=3)
    labels = read_idx(paths[1], expect_ndim=1)
    if len(images) != len(labels):
        raise ValueError(
            f"MNIST count mismatch: {paths[0]} holds {len(images)} images but {paths[1]} "
            f"holds {len(labels)} labels."
        )
    if len(labels) and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(
            f"MNIST label file {paths[1]}: label {int(labels[bad])} at index {bad} is out of "
            f"range [0, 10)."
        )
    return Dataset(
        images=images[..., None],
        labels=labels.astype(np.int32),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        name=f"mnist/{split}",
    )
