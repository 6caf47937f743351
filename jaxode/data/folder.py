"""Image-folder datasets, from a folder or a zip of one, decoded in parallel.

Layout: ``ROOT/<split>/<class>/<image>``, optionally below one top folder inside the
zip or folder (``cifar10-jpeg/train/airplane/0000.jpg``).  Class names are the sorted
class-folder names found under the ``train`` and ``test`` folders together (so both
splits share one label numbering); label = index in that list.

Decoding 60,000 small JPEGs is the slow part of a first run; `decode_images` spreads
the files over worker processes (`concurrent.futures`; forked while no JAX backend has
started, spawned otherwise, so that live XLA threads are never forked) and shows a
tqdm bar.  `jaxode.data.cache` keeps the result.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import zipfile
from typing import Sequence

import numpy as np

from jaxode.data.dataset import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "Source",
    "decode_images",
    "find_split_layout",
    "read_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F", "P_GREY")
# Below this many images the pool start-up (a few seconds) costs more than it saves.
PARALLEL_THRESHOLD = 4096
CHUNK = 1000


def _is_hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


class Source:
    """A folder or a zip file, addressed by relative posix paths."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"No such file or folder: {self.path}")
        self.is_zip = os.path.isfile(self.path)
        if self.is_zip:
            try:
                with zipfile.ZipFile(self.path) as zf:
                    listed = zf.namelist()
                    self._names = [n for n in listed if not n.endswith("/")]
                    self._dirs = {n.rstrip("/") for n in listed if n.endswith("/")}
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(
                    f"{self.path} is not a readable zip file ({e}); it may be truncated or "
                    f"corrupt: download or copy it again."
                ) from e
        else:
            names, dirs = [], set()
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames.sort()
                for d in dirnames:
                    dirs.add(os.path.relpath(os.path.join(dirpath, d), self.path).replace(os.sep, "/"))
                for fn in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, fn), self.path)
                    names.append(rel.replace(os.sep, "/"))
            self._names = names
            self._dirs = dirs
        self._names = sorted(n for n in self._names if not _is_hidden(n))
        # folders, including those implied by the file paths (zips may omit folder entries)
        implied = {"/".join(n.split("/")[:k]) for n in self._names for k in range(1, n.count("/") + 1)}
        self._dirs = {d for d in self._dirs | implied if not _is_hidden(d)}

    def names(self) -> list[str]:
        return self._names

    def folders(self) -> set[str]:
        """Every folder inside the source (relative posix paths), empty ones included."""
        return self._dirs

    def describe(self, rel: str) -> str:
        """A human-readable location: ``zip::member`` or a filesystem path."""
        return f"{self.path}::{rel}" if self.is_zip else os.path.join(self.path, rel)

    def read_bytes(self, rel: str) -> bytes:
        return _read_bytes(self.path, self.is_zip, rel)


_ZIPS: dict[tuple[int, str, int, int], zipfile.ZipFile] = {}


def _read_bytes(path: str, is_zip: bool, rel: str) -> bytes:
    if is_zip:
        # One open handle per process: a handle inherited through fork shares its file
        # offset with the parent, so concurrent reads would interleave.
        # The key holds size and mtime so that a replaced zip is opened afresh.
        st = os.stat(path)
        k = (os.getpid(), path, st.st_size, st.st_mtime_ns)
        zf = _ZIPS.get(k)
        if zf is None:
            for old in [o for o in _ZIPS if o[:2] == k[:2]]:
                _ZIPS.pop(old).close()
            zf = _ZIPS[k] = zipfile.ZipFile(path)
        return zf.read(rel)
    with open(os.path.join(path, rel), "rb") as f:
        return f.read()


def _is_grey(im) -> bool:
    return im.mode in _GREY_MODES or (
        im.mode == "P" and im.palette is not None and im.palette.mode == "L"
    )


def _any_colour(source: "Source", names: Sequence[str]) -> bool:
    """Whether any of `names` is a colour image (reads the headers only)."""
    from PIL import Image

    for rel in names:
        try:
            with Image.open(io.BytesIO(source.read_bytes(rel))) as im:
                if not _is_grey(im):
                    return True
        except Exception:  # noqa: BLE001 - a damaged file is reported when its split is read
            continue
    return False


def _decode_one(data: bytes, where: str, size: tuple[int, int] | None):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            grey = _is_grey(im)
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"Could not decode image {where}: {e} (corrupt or truncated file).") from e
    return arr, grey


def _decode_chunk(path: str, is_zip: bool, names: Sequence[str], size):
    """Worker: decode `names` to one uint8 array (n, H, W, 3) and an all-grey flag."""
    out = None
    all_grey = True
    first = None
    for i, rel in enumerate(names):
        where = f"{path}::{rel}" if is_zip else os.path.join(path, rel)
        try:
            data = _read_bytes(path, is_zip, rel)
        except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
            raise ValueError(f"Could not read {where}: {e} (corrupt or truncated archive).") from e
        arr, grey = _decode_one(data, where, size)
        if out is None:
            first = where
            out = np.empty((len(names),) + arr.shape, dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise ValueError(
                f"Image {where} has size {arr.shape[1]}x{arr.shape[0]} but {first} has "
                f"{out.shape[2]}x{out.shape[1]}; "
                "resize the images to one size first (or, in Python, pass image_size= to "
                "read_image_folder)."
            )
        out[i] = arr
        all_grey &= grey
    return out, all_grey, first


def _start_method() -> str:
    """"fork" while no JAX backend is running (fast: no re-import in the workers),
    else "spawn" (a process with live XLA threads must not fork)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return "spawn"
    except Exception:  # private API moved: be safe
        return "spawn"
    return "fork"


def decode_images(
    source: Source,
    names: Sequence[str],
    *,
    image_size: int | tuple[int, int] | None = None,
    workers: int | None = None,
    desc: str = "decoding",
    progress: bool = True,
) -> np.ndarray:
    """Decode `names` from `source` into one uint8 array (N, H, W, C).

    C is 1 when every image is greyscale, else 3 (grey images are replicated to RGB).
    With `image_size` every image is resized (Pillow bilinear, which low-pass filters
    when shrinking) to that size; otherwise all images must have the same size.
    `workers` processes decode in parallel (default: the CPU count; 1 or a small
    file count decodes in this process).
    """
    from tqdm.auto import tqdm

    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    names = list(names)
    if not names:
        raise ValueError(f"No images to decode in {source.path}.")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    chunks = [names[i : i + CHUNK] for i in range(0, len(names), CHUNK)]
    results: list = [None] * len(chunks)
    bar = tqdm(total=len(names), desc=desc, unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1 or len(names) < PARALLEL_THRESHOLD:
            for k, ch in enumerate(chunks):
                results[k] = _decode_chunk(source.path, source.is_zip, ch, image_size)
                bar.update(len(ch))
        else:
            ctx = multiprocessing.get_context(_start_method())
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futs = {
                    pool.submit(_decode_chunk, source.path, source.is_zip, ch, image_size): k
                    for k, ch in enumerate(chunks)
                }
                for fut in cf.as_completed(futs):
                    k = futs[fut]
                    results[k] = fut.result()
                    bar.update(len(chunks[k]))
    finally:
        bar.close()
    shape = results[0][0].shape[1:]
    for arr, _, first in results[1:]:
        if arr.shape[1:] != shape:
            raise ValueError(
                f"Image {first} has size {arr.shape[2]}x{arr.shape[1]} but {results[0][2]} "
                f"has {shape[1]}x{shape[0]}; "
                "resize the images to one size first (or, in Python, pass image_size= to "
                "read_image_folder)."
            )
    images = np.concatenate([r[0] for r in results], axis=0)
    if all(r[1] for r in results):
        images = np.ascontiguousarray(images[..., :1])
    return images


def find_split_layout(source: Source, split: str) -> tuple[str, list[str]]:
    """Find ``<prefix><split>/<class>/<image>`` in `source`.

    Returns the prefix ("" or "top/") and the sorted class names (the class folders of
    the ``train`` and ``test`` folders and of `split`, together).
    """
    prefixes = set()
    for n in source.names():
        parts = n.split("/")
        if len(parts) >= 3 and parts[-3] == split and n.lower().endswith(IMAGE_EXTENSIONS):
            prefixes.add("/".join(parts[:-3]))
    if not prefixes:
        raise ValueError(
            f"No images found for split {split!r} in {source.path}: expected files like "
            f"{source.describe(f'[top/]{split}/<class>/<image>.jpg')}. Check the path "
            f"(root= / --data-root / JAXODE_DATA) and the split name."
        )
    prefix = min(prefixes, key=lambda p: (p.count("/"), len(p), p))
    prefix = prefix + "/" if prefix else ""
    classes = set()
    for n in source.names():
        if not n.startswith(prefix) or not n.lower().endswith(IMAGE_EXTENSIONS):
            continue
        parts = n[len(prefix) :].split("/")
        if len(parts) == 3 and parts[0] in {split, "train", "test"}:
            classes.add(parts[1])
    base = prefix + split + "/"
    empty = sorted(d[len(base):] for d in source.folders()
                   if d.startswith(base) and "/" not in d[len(base):]
                   and not any(n.startswith(d + "/") for n in source.names()
                               if n.lower().endswith(IMAGE_EXTENSIONS)))
    if empty:
        raise ValueError(
            f"class folder(s) {', '.join(empty)} in {source.describe(base)} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images to them or remove them.")
    return prefix, sorted(classes)


def read_image_folder(
    path: str | os.PathLike,
    split: str,
    *,
    image_size: int | tuple[int, int] | None = None,
    workers: int | None = None,
    name: str | None = None,
    progress: bool = True,
) -> Dataset:
    """The `split` of an image-folder dataset at `path` (a folder or a ``.zip``).

    **Arguments:**

    - `path`: folder or zip holding ``[top/]<split>/<class>/<image>``.
    - `split`: the split folder's name, e.g. "train" or "test".
    - `image_size`: resize every image to this size (int or (H, W)); default: keep, and
      require one size.
    - `workers`: decoding processes (default: CPU count).
    - `name`: the dataset's name (default ``<folder>/<split>``).

    Files are taken in sorted path order, so the order is reproducible.  Images are
    grey (C = 1) only when every image of every split is grey; otherwise every split is
    RGB (grey images replicated), so train and test always agree.  An empty class
    folder is refused.
    """
    source = Source(path)
    prefix, classes = find_split_layout(source, split)
    index = {c: i for i, c in enumerate(classes)}
    base = prefix + split + "/"
    files, labels = [], []
    for n in source.names():
        if n.startswith(base) and n.lower().endswith(IMAGE_EXTENSIONS):
            parts = n[len(base) :].split("/")
            if len(parts) == 2:
                files.append(n)
                labels.append(index[parts[0]])
    if name is None:
        stem = os.path.basename(source.path)
        stem = stem[:-4] if stem.lower().endswith(".zip") else stem
        name = f"{stem}/{split}"
    images = decode_images(
        source, files, image_size=image_size, workers=workers, desc=f"decoding {name}",
        progress=progress,
    )
    if images.shape[-1] == 1:  # one channel count for every split of the dataset
        others = [n for n in source.names() if n.startswith(prefix) and not n.startswith(base)
                  and n.lower().endswith(IMAGE_EXTENSIONS)
                  and len(n[len(prefix):].split("/")) == 3]
        if _any_colour(source, others):
            images = np.repeat(images, 3, axis=-1)
    return Dataset(
        images=images,
        labels=np.asarray(labels, dtype=np.int32),
        num_classes=len(classes),
        class_names=tuple(classes),
        name=name,
    )
