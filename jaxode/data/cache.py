"""A disk cache of decoded datasets, so that slow decoding (60,000 JPEGs) happens once.

An entry is an uncompressed ``.npz`` of named arrays: for a `Dataset` its ``images``,
``labels``, ``class_names``; other readers (CamVid's segmentation splits) give their own
`to_arrays` / `from_arrays` pair.  Its file name carries a hash of everything the decoded arrays depend on: the reader and
its version, the absolute source path, the source's size and modification time (so a
replaced file is decoded again), the split and the reader's options.  Entries are
written to a temporary file in the same folder and moved into place with `os.replace`,
so a crash or a parallel writer never leaves a half-written entry under the final name.

The folder is `cache_dir`, else ``$JAXODE_CACHE``, else ``~/.cache/jaxode``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = ["default_cache_dir", "source_fingerprint", "cached"]

# Bump when a reader's output for the same file would change.
CACHE_VERSION = 2  # 2: folder splits share one channel count


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """The cache folder: the argument, else ``$JAXODE_CACHE``, else ``~/.cache/jaxode``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    env = os.environ.get("JAXODE_CACHE")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "jaxode")


def source_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Absolute path, size and mtime of a file; for a folder, of every file below it."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    if not os.path.isdir(path):
        return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.sha1()
    count = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for fn in sorted(filenames):
            fst = os.stat(os.path.join(dirpath, fn))
            rel = os.path.relpath(os.path.join(dirpath, fn), path)
            h.update(f"{rel}\0{fst.st_size}\0{fst.st_mtime_ns}\n".encode())
            count += 1
            total += fst.st_size
    return {"path": path, "files": count, "size": total, "listing": h.hexdigest()}


def _key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def cached(
    make: Callable[[], Dataset],
    *,
    reader: str,
    source: str | os.PathLike,
    split: str,
    options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    enabled: bool = True,
    to_arrays: Callable[[Any], dict[str, np.ndarray]] | None = None,
    from_arrays: Callable[[dict[str, np.ndarray]], Any] | None = None,
) -> Any:
    """Return the cached dataset for this (reader, source, split, options), or build it
    with `make()` and store it.

    **Arguments:**

    - `make`: builds the `Dataset` (the slow decode).
    - `reader`: the reader's name, part of the key and of the file name.
    - `source`: the file or folder the data come from; its size and mtime are in the key.
    - `split`, `options`: the rest of the key.
    - `cache_dir`: the folder (see `default_cache_dir`).
    - `enabled`: ``False`` skips the cache entirely.
    - `to_arrays` / `from_arrays`: how a non-`Dataset` result (e.g. CamVid's
      `SegSplit`) becomes named arrays and back; default: a `Dataset`.
    """
    if not enabled:
        return make()
    parts = {
        "reader": reader,
        "source": source_fingerprint(source),
        "split": split,
        "options": options or {},
    }
    folder = default_cache_dir(cache_dir)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{reader}-{split}")
    path = os.path.join(folder, f"{safe}-{_key(parts)}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                return (from_arrays or _dataset_from_arrays)({k: z[k] for k in z.files})
        except Exception:
            # A damaged entry (e.g. disk full on another machine): rebuild it.
            pass
    ds = make()
    try:
        _store((to_arrays or _dataset_arrays)(ds), folder, path)
    except OSError as e:  # read-only, full or missing cache folder: run without the cache
        import warnings

        warnings.warn(f"cannot write the dataset cache {folder} ({e.strerror or e}); "
                      "continuing without it (set JAXODE_CACHE to a writable folder to "
                      "keep the decoded images).", RuntimeWarning, stacklevel=2)
    return ds


def _dataset_arrays(ds: Dataset) -> dict[str, np.ndarray]:
    return dict(images=ds.images, labels=ds.labels, num_classes=np.int64(ds.num_classes),
                class_names=np.array(ds.class_names, dtype=str), name=np.array(ds.name))


def _dataset_from_arrays(z: dict[str, np.ndarray]) -> Dataset:
    return Dataset(images=z["images"], labels=z["labels"], num_classes=int(z["num_classes"]),
                   class_names=tuple(str(c) for c in z["class_names"]), name=str(z["name"]))


def _store(arrays: dict[str, np.ndarray], folder: str, path: str) -> None:
    """Write `arrays` to `path` through a temporary file in `folder` (atomic)."""
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
