"""`load_dataset`: one entry point from a dataset spec to a `Dataset`.

Specs:

- ``digits``: scikit-learn's bundled 8x8 digits (no files needed), 1,437/360 split.
- ``mnist``: the IDX files (gzipped or not) in `root`, in ``root/mnist`` or in
  ``$JAXODE_DATA/mnist``.
- ``cifar10``: an image folder ``[top/]<split>/<class>/<img>``, as a folder or a zip:
  `root`, else ``$JAXODE_DATA/cifar10-jpeg.zip`` (top folder ``cifar10-jpeg/``).
- ``folder:PATH``: any image folder or zip of one (split = the split folder's name).
- ``tiny-imagenet``: the Tiny-ImageNet-200 validation split in its original layout
  (split ``"val"``), from `root` or ``$JAXODE_DATA/tiny-imagenet-200-val.zip``.
- ``tfds:NAME``: a tensorflow-datasets dataset (optional dependency; `root` is its
  ``data_dir``).

Decoded image folders are cached (see `jaxode.data.cache`), so only the first load of
CIFAR-10 decodes JPEGs.
"""

from __future__ import annotations

import os

from jaxode.data.cache import cached
from jaxode.data.dataset import Dataset

__all__ = ["load_dataset", "load_classification", "data_root", "resolve_path", "SPECS"]

SPECS = ("digits", "mnist", "cifar10", "tiny-imagenet", "folder:PATH", "tfds:NAME")

_HOW = "pass root= (--data-root on the command line) or set the environment variable JAXODE_DATA"


def data_root() -> str:
    """``$JAXODE_DATA``, or a FileNotFoundError saying how to set it."""
    env = os.environ.get("JAXODE_DATA")
    if not env:
        raise FileNotFoundError(
            f"No data folder given: {_HOW} to the folder holding the datasets "
            f"(e.g. mnist/, cifar10-jpeg.zip)."
        )
    return env


def resolve_path(spec: str, root: str | None, candidates: tuple[str, ...]) -> str:
    """The first existing path among `root` / `root/<candidate>` / `$JAXODE_DATA/<candidate>`.

    Raises FileNotFoundError listing every path looked at and how to set the location.
    """
    looked = []
    if root is not None:
        root = os.path.expanduser(os.fspath(root))
        paths = [root] if not os.path.isdir(root) else [os.path.join(root, c) for c in candidates] + [root]
    else:
        env = os.environ.get("JAXODE_DATA")
        if not env:
            raise FileNotFoundError(
                f"Dataset {spec!r}: no location given; {_HOW} (looked for "
                f"{' or '.join(candidates)} there)."
            )
        paths = [os.path.join(os.path.expanduser(env), c) for c in candidates]
    for p in paths:
        looked.append(os.path.abspath(p))
        if os.path.exists(p):
            return os.path.abspath(p)
    raise FileNotFoundError(
        f"Dataset {spec!r} not found; looked at: {', '.join(looked)}. {_HOW[0].upper() + _HOW[1:]}."
    )


def _check_split(spec: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"Dataset {spec!r} has splits {allowed}, got split={split!r}.")


def load_dataset(
    spec: str,
    split: str,
    *,
    root: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Load split `split` of the dataset named by `spec` as a `Dataset` (uint8 NHWC).

    **Arguments:**

    - `spec`: ``"digits"``, ``"mnist"``, ``"cifar10"``, ``"tiny-imagenet"``,
      ``"folder:PATH"`` or ``"tfds:NAME"``.
    - `split`: ``"train"`` or ``"test"`` (``"val"`` for tiny-imagenet; any split
      folder name for ``folder:``; any tfds split string for ``tfds:``).
    - `root`: where the files are (a folder or a file); default ``$JAXODE_DATA``.
    - `cache_dir`: where decoded arrays are cached; default ``$JAXODE_CACHE`` or
      ``~/.cache/jaxode``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a string such as 'cifar10', got {spec!r}.")
    if spec == "digits":
        from jaxode.data.digits import load_digits

        _check_split(spec, split, ("train", "test"))
        return load_digits(split)
    if spec == "mnist":
        from jaxode.data.idx import MNIST_FILES, _find, load_mnist

        _check_split(spec, split, ("train", "test"))
        if root is not None and os.path.isdir(root) and _find(root, MNIST_FILES[split][0]):
            folder = root
        else:
            folder = resolve_path(spec, root, ("mnist",))
        return load_mnist(folder, split)
    if spec == "cifar10":
        _check_split(spec, split, ("train", "test"))
        if root is not None and os.path.isdir(root) and os.path.isdir(os.path.join(root, split)):
            path = root
        else:
            path = resolve_path(spec, root, ("cifar10-jpeg.zip", "cifar10-jpeg", "cifar10"))
        return _folder(path, split, cache_dir, name=f"cifar10/{split}")
    if spec.startswith("folder:"):
        path = os.path.expanduser(spec[len("folder:") :])
        if root is not None and not os.path.isabs(path):
            path = os.path.join(root, path)
        if not path or not os.path.exists(path):
            raise FileNotFoundError(
                f"Image folder {os.path.abspath(path) if path else '(empty)'} does not exist; "
                f"give an existing folder or zip as 'folder:PATH'."
            )
        return _folder(path, split, cache_dir, name=None)
    if spec in ("tiny-imagenet", "tiny-imagenet-200", "tinyimagenet"):
        from jaxode.data.tiny_imagenet import load_tiny_imagenet_val

        _check_split(spec, split, ("val",))
        path = resolve_path(spec, root, ("tiny-imagenet-200-val.zip", "tiny-imagenet-200"))
        return load_tiny_imagenet_val(path, cache_dir=cache_dir)
    if spec.startswith("tfds:"):
        from jaxode.data.tfds_source import load_tfds

        return load_tfds(spec[len("tfds:") :], split, data_dir=root)
    raise ValueError(
        f"Unknown dataset spec {spec!r}; use one of {', '.join(SPECS)}."
    )


def load_classification(spec: str, *, root: str | None = None, train_limit: int | None = None,
                        test_limit: int | None = None, cache_dir: str | None = None):
    """``(train, test)`` `Dataset`s of `spec` for a classifier, each optionally cut to
    its first `train_limit` / `test_limit` examples.  A ValueError refuses an empty set
    or a training set of fewer than two classes, naming the flags to check."""
    import numpy as np

    train = load_dataset(spec, "train", root=root, cache_dir=cache_dir)
    test = load_dataset(spec, "test", root=root, cache_dir=cache_dir)
    if train_limit is not None:
        train = train.subset(slice(0, train_limit))
    if test_limit is not None:
        test = test.subset(slice(0, test_limit))
    for ds in (train, test):
        if len(ds) == 0 or (ds is train and len(np.unique(ds.labels)) < 2):
            raise ValueError(
                f"dataset {ds.name!r} has {len(ds)} examples of "
                f"{len(np.unique(ds.labels))} class(es); a classifier needs at least two "
                "classes in training and a non-empty test set (check --dataset, "
                "--train-limit, --test-limit).")
    return train, test


def _folder(path: str, split: str, cache_dir: str | None, name: str | None) -> Dataset:
    from jaxode.data.folder import read_image_folder

    return cached(
        lambda: read_image_folder(path, split, name=name),
        reader="folder",
        source=path,
        split=split,
        options={"name": name},
        cache_dir=cache_dir,
    )
