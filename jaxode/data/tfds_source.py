"""Datasets from tensorflow-datasets (``tfds:NAME``), the catalog source when online.

tensorflow-datasets and TensorFlow are optional (``pip install jaxode[tfds]``); they
are imported only when a ``tfds:`` spec is loaded.  The whole split is materialised as
numpy arrays (read in batches) and converted to the project's `Dataset`: images uint8
(N, H, W, C), labels int32, class names from the label feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = ["load_tfds", "import_tfds", "from_tfds_arrays"]

_INSTALL_HINT = (
    "The 'tfds:' dataset source needs tensorflow-datasets and TensorFlow, which are not "
    "installed; install them with `pip install 'jaxode[tfds]'` (or `pip install "
    "tensorflow-datasets tensorflow-cpu`), or use a local source such as 'folder:PATH'."
)


def import_tfds():
    """Import tensorflow_datasets, or raise ImportError saying how to install it."""
    try:
        import tensorflow_datasets as tfds  # noqa: F401
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return tfds


def _pick(features: dict[str, Any], keys: tuple[str, ...], what: str, name: str) -> str:
    for k in keys:
        if k in features:
            return k
    raise ValueError(
        f"tfds dataset {name!r} has no {what} feature among {sorted(features)}; "
        f"expected one of {keys}."
    )


def from_tfds_arrays(
    arrays: dict[str, Any],
    *,
    name: str,
    class_names: tuple[str, ...] | None,
    num_classes: int | None,
    image_key: str | None = None,
    label_key: str | None = None,
) -> Dataset:
    """Convert a tfds split materialised as a dict of arrays into a `Dataset`.

    Greyscale images without a channel axis get one; float images in [0, 1] are
    scaled to uint8; labels must be integers in ``[0, num_classes)``.
    """
    image_key = image_key or _pick(arrays, ("image", "img", "x"), "image", name)
    label_key = label_key or _pick(arrays, ("label", "labels", "y"), "label", name)
    images = np.asarray(arrays[image_key])
    labels = np.asarray(arrays[label_key])
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"tfds dataset {name!r}: feature {image_key!r} has shape {images.shape}; "
            f"expected (N, H, W, C) images of one size."
        )
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
            images = np.round(images * 255.0)
        images = np.clip(images, 0, 255).astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1:
        raise ValueError(
            f"tfds dataset {name!r}: feature {label_key!r} has dtype {labels.dtype} and "
            f"shape {labels.shape}; expected integer class labels of shape (N,)."
        )
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max()) + 1
    if not class_names:
        class_names = tuple(str(i) for i in range(num_classes))
    return Dataset(
        images=np.ascontiguousarray(images),
        labels=labels.astype(np.int32),
        num_classes=int(num_classes),
        class_names=tuple(class_names),
        name=name,
    )


def load_tfds(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    download: bool = True,
    batch_size: int = 1024,
) -> Dataset:
    """Load split `split` of the tfds dataset `name` (e.g. "mnist", "cifar10").

    The split is read in batches of `batch_size` and concatenated (``batch_size=-1``,
    one tensor for the whole split, aborts inside TensorFlow 2.21 on mock data).
    """
    from tqdm.auto import tqdm

    tfds = import_tfds()
    ds, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        batch_size=batch_size,
        with_info=True,
        download=download,
    )
    parts: dict[str, list] = {}
    for batch in tqdm(tfds.as_numpy(ds), desc=f"reading tfds:{name}/{split}", leave=False):
        for k, v in batch.items():
            parts.setdefault(k, []).append(np.asarray(v))
    if not parts:
        raise ValueError(f"tfds dataset {name!r} split {split!r} holds no examples.")
    arrays = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
    image_key = label_key = None
    if getattr(info, "supervised_keys", None):
        image_key, label_key = info.supervised_keys[:2]
    label_key_found = label_key or _pick(arrays, ("label", "labels", "y"), "label", name)
    class_names = num_classes = None
    feature = info.features[label_key_found] if label_key_found in info.features else None
    if feature is not None and hasattr(feature, "num_classes"):
        num_classes = int(feature.num_classes)
        names = getattr(feature, "names", None)
        class_names = tuple(names) if names else None
    return from_tfds_arrays(
        arrays,
        name=f"tfds:{name}/{split}",
        class_names=class_names,
        num_classes=num_classes,
        image_key=image_key,
        label_key=label_key,
    )
