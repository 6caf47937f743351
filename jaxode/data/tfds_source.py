"""Datasets from tensorflow-datasets (``tfds:NAME``), the catalog source when online.

tensorflow-datasets and TensorFlow are optional (``pip install jaxode[tfds]``); they
are imported only when a ``tfds:`` spec is loaded.  The whole split is materialised as
numpy arrays (read in batches) and converted to the project's `Dataset`: images uint8
(N, H, W, C), labels int32, class names from the label feature.  Segmentation datasets
(`load_tfds_segmentation`) become a `SegSplit` like CamVid's: uint8 images and masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = ["load_tfds", "load_tfds_segmentation", "import_tfds", "from_tfds_arrays"]

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


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (size[0], size[1], 3), Pillow's bilinear filter."""
    from PIL import Image

    if image.shape[:2] == tuple(size):
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class indices -> `size` by nearest neighbour on pixel centres, in integers:
    out[i, j] = mask[(2i + 1) H // (2 size[0]), (2j + 1) W // (2 size[1])] (no class is
    invented, and no float rounding decides ties)."""
    h, w = mask.shape[:2]
    rows = (2 * np.arange(size[0]) + 1) * h // (2 * size[0])
    cols = (2 * np.arange(size[1]) + 1) * w // (2 * size[1])
    return mask[rows][:, cols]


def load_tfds_segmentation(
    name: str,
    split: str,
    *,
    size: tuple[int, int] | None = None,
    data_dir: str | None = None,
    download: bool = True,
    image_key: str = "image",
    mask_key: str | None = None,
):
    """Load split `split` of a tfds segmentation dataset (e.g. "oxford_iiit_pet") as a
    `jaxode.data.camvid.SegSplit`: images uint8 (N, H, W, 3), labels uint8 (N, H, W)
    holding the mask's class indices as stored (oxford_iiit_pet: 1 pet, 2 background,
    3 outline), names from the ``file_name`` feature (else the example index).

    Images and masks of other sizes than `size` (H, W) are resized to it (bilinear for
    images, nearest-neighbour for masks); without `size` every example must already
    have the size of the first.  `mask_key` defaults to the first of
    ``segmentation_mask``, ``mask``, ``label`` with an image-shaped feature.
    """
    from jaxode.data.camvid import SegSplit

    tfds = import_tfds()
    ds = tfds.load(name, split=split, data_dir=data_dir, download=download)
    images, labels, names = [], [], []
    for i, ex in enumerate(tfds.as_numpy(ds)):
        if mask_key is None:
            mask_key = _pick({k: v for k, v in ex.items() if np.ndim(v) >= 2},
                             ("segmentation_mask", "mask", "label"), "mask", name)
        if image_key not in ex:
            raise ValueError(f"tfds dataset {name!r} has no {image_key!r} feature among "
                             f"{sorted(ex)}; pass image_key=.")
        image, mask = np.asarray(ex[image_key]), np.asarray(ex[mask_key])
        if image.dtype != np.uint8 or mask.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"tfds dataset {name!r}: expected uint8 RGB images and uint8 masks, got "
                f"{image_key!r} {image.dtype}{image.shape} and {mask_key!r} {mask.dtype}{mask.shape}.")
        target = tuple(size) if size is not None else (images[0].shape[:2] if images else image.shape[:2])
        if size is None and (image.shape[:2] != target or mask.shape[:2] != target):
            raise ValueError(
                f"tfds dataset {name!r} split {split!r}: example {i} has image "
                f"{image.shape[:2]} and mask {mask.shape[:2]}, unlike {target}; pass "
                "size=(H, W) to resize every example to one size.")
        images.append(_resize_image(image, target))
        labels.append(_resize_mask(mask.reshape(mask.shape[:2]), target))
        file_name = ex.get("file_name")
        names.append(file_name.decode() if isinstance(file_name, bytes) else str(i))
    if not images:
        raise ValueError(f"tfds dataset {name!r} split {split!r} holds no examples.")
    return SegSplit(np.stack(images), np.stack(labels), tuple(names))
