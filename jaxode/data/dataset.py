"""The in-memory dataset record and the batch iterator shared by every reader.

Images stay ``uint8`` in NHWC layout on the host until a training step moves a batch
to the device (`jaxode.data.augment.to_model_input` turns it into float32 NCHW there).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

__all__ = ["Dataset", "iterate_batches", "seed_from_key"]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image set held in host memory.

    **Fields:**

    - `images`: ``uint8`` array of shape ``(N, H, W, C)``.
    - `labels`: ``int32`` array of shape ``(N,)`` with values in ``[0, num_classes)``.
    - `num_classes`: the number of classes.
    - `class_names`: one name per class, index = label.
    - `name`: a short description, e.g. ``"cifar10/train"``.

    The constructor checks shapes, dtypes and label range, so every reader gets the
    same validation and a bad file is reported once, with the dataset's name.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(
                f"Dataset {self.name!r}: images must be a uint8 numpy array of shape "
                f"(N, H, W, C), got {type(images).__name__} "
                f"{getattr(images, 'dtype', None)} {getattr(images, 'shape', None)}."
            )
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32 or labels.ndim != 1:
            raise TypeError(
                f"Dataset {self.name!r}: labels must be an int32 numpy array of shape (N,), "
                f"got {type(labels).__name__} {getattr(labels, 'dtype', None)} "
                f"{getattr(labels, 'shape', None)}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"Dataset {self.name!r}: {len(images)} images but {len(labels)} labels."
            )
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"Dataset {self.name!r}: num_classes={self.num_classes} but "
                f"{len(self.class_names)} class names were given."
            )
        if len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"Dataset {self.name!r}: label {bad} is out of range "
                    f"[0, {self.num_classes}); the label file or class list is inconsistent."
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Any, name: str | None = None) -> "Dataset":
        """The examples at `index` (an integer array, a slice or a boolean mask)."""
        return Dataset(
            images=self.images[index],
            labels=self.labels[index],
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=name or self.name,
        )

    def sample(self, n: int | None, seed: int = 0) -> "Dataset":
        """`n` examples drawn without replacement (kept in their order); all of them
        when `n` is None or at least the size of the set."""
        if n is None or n >= len(self):
            return self
        idx = np.random.default_rng(seed).permutation(len(self))[:n]
        return self.subset(np.sort(idx))

    def per_class(self, per_class: int, seed: int) -> "Dataset":
        """`per_class` examples drawn *with* replacement from each class (the small-data
        regime of Tomen et al., Table 2, as their reference code draws it)."""
        empty = [c for c in range(self.num_classes) if not np.any(self.labels == c)]
        if empty:
            raise ValueError(f"{self.name!r} has no images of class(es) {empty}, so it cannot "
                             f"give {per_class} per class; use the full training set.")
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(self.labels == c), per_class,
                                         replace=True) for c in range(self.num_classes)])
        return self.subset(np.sort(idx), name=f"{self.name}[{per_class}/class,seed {seed}]")

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )


def seed_from_key(key_or_seed: Any) -> np.random.SeedSequence:
    """A numpy seed from an int or a JAX PRNG key (old uint32 or new typed style)."""
    if isinstance(key_or_seed, (int, np.integer)):
        return np.random.SeedSequence(int(key_or_seed))
    try:
        import jax

        data = key_or_seed
        if jax.dtypes.issubdtype(getattr(data, "dtype", None), jax.dtypes.prng_key):
            data = jax.random.key_data(data)
        words = np.asarray(data, dtype=np.uint32).ravel()
    except Exception as e:  # pragma: no cover - message path
        raise TypeError(
            f"key_or_seed must be an int or a JAX PRNG key, got {key_or_seed!r}."
        ) from e
    return np.random.SeedSequence([int(w) for w in words])


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    key_or_seed: Any = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` numpy batches (``uint8`` NHWC, ``int32``) for one epoch.

    **Arguments:**

    - `dataset`: a `Dataset`.
    - `batch_size`: examples per batch.
    - `key_or_seed`: an int or a JAX key; the same value gives the same order, so pass
      e.g. ``jax.random.fold_in(key, epoch)`` for a new order each epoch.
    - `shuffle`: permute the examples (otherwise the stored order).
    - `drop_last`: skip the final batch when it is smaller than `batch_size` (keeps
      shapes static under `jit`).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    n = len(dataset)
    if shuffle:
        order = np.random.default_rng(seed_from_key(key_or_seed)).permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if shuffle:
            yield dataset.images[idx], dataset.labels[idx]
        else:
            yield dataset.images[start : start + len(idx)], dataset.labels[start : start + len(idx)]
