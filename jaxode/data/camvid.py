"""CamVid in the SegNet layout (Badrinarayanan et al.; used by Khoshsirat & Kambhamettu,
Sec. 4.3): 367 train / 101 val / 233 test images of 480x360, 11 classes, label 11
(void) ignored.  Plus the device-side augmentation and the colour palette.

Source layout (a folder, or a zip such as ``$JAXODE_DATA/camvid-segnet.zip``)::

    CamVid/{train,val,test}.txt        one "image label" pair of relative paths a line
    CamVid/{train,val,test}/<name>.jpg
    CamVid/{train,val,test}annot/<name>.png   8-bit class indices 0..11

`load_camvid(path)` decodes a split once and keeps it in the common decoded-array cache
of `jaxode.data.cache` (keyed by the zip's or folder's size and modification time; in
`cache_dir`, default ``$JAXODE_CACHE`` or ``~/.cache/jaxode``).  Images stay uint8
(N, H, W, 3) and labels uint8 (N, H, W) until they reach the device.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxode.data.cache import cached

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
           "Car", "Pedestrian", "Bicyclist")
NUM_CLASSES = 11
IGNORE_LABEL = 11
SPLITS = ("train", "val", "test")
SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}
# Display colours by class index; index 11 (void) is black.
PALETTE = np.array(
    [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
     (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
     (0, 128, 192), (0, 0, 0)], np.uint8)
# ImageNet statistics, the usual normalisation of HRNet inputs.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class SegSplit(NamedTuple):
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N, H, W) uint8
    names: tuple[str, ...]


# ------------------------------------------------------------------------- reading


class _Source:
    """A CamVid root inside a folder or a zip, with uniform file access."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.zip = None
        if os.path.isfile(self.path):
            try:
                self.zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as e:
                raise ValueError(f"CamVid: {self.path} is not a readable zip archive ({e}).") from e
            names = set(self.zip.namelist())
            for prefix in ("CamVid/", ""):
                if prefix + "train.txt" in names:
                    self.prefix = prefix
                    break
            else:
                raise FileNotFoundError(
                    f"CamVid: {self.path} holds no CamVid/train.txt; expected the SegNet "
                    "layout CamVid/{train,val,test}.txt with image and annot folders."
                )
        elif os.path.isdir(self.path):
            for sub in ("CamVid", ""):
                if os.path.isfile(os.path.join(self.path, sub, "train.txt")):
                    self.prefix = os.path.join(self.path, sub)
                    break
            else:
                raise FileNotFoundError(
                    f"CamVid: no train.txt under {self.path} or {os.path.join(self.path, 'CamVid')}; "
                    "give the folder or zip with the SegNet layout (see jaxode.data.camvid)."
                )
        else:
            raise FileNotFoundError(
                f"CamVid: {self.path} does not exist; pass the CamVid folder or "
                "camvid-segnet.zip (or set JAXODE_DATA to the folder holding it)."
            )

    def read(self, rel: str) -> bytes:
        if self.zip is not None:
            name = self.prefix + rel
            try:
                return self.zip.read(name)
            except KeyError:
                raise FileNotFoundError(f"CamVid: {name} is missing from {self.path}.") from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"CamVid: {name} in {self.path} is corrupt ({e}).") from e
        full = os.path.join(self.prefix, rel)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"CamVid: {full} is missing.")
        with open(full, "rb") as f:
            return f.read()


def _decode(data: bytes, what: str, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if mode == "RGB":
                im = im.convert("RGB")
            elif im.mode not in ("L", "P"):
                raise ValueError(f"CamVid: label {what} has mode {im.mode}; expected 8-bit indices.")
            return np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"CamVid: cannot decode {what} ({e}); the file is corrupt.") from e


def _read_split(src: _Source, split: str, limit: int | None) -> SegSplit:
    listing = src.read(f"{split}.txt").decode().split("\n")
    pairs = [line.split() for line in listing if line.strip()]
    bad = [p for p in pairs if len(p) != 2]
    if bad:
        raise ValueError(f"CamVid: {split}.txt has a line that is not 'image label': {bad[0]}.")
    if limit is not None:
        pairs = pairs[:limit]
    images, labels, names = [], [], []
    for img_rel, lab_rel in pairs:
        img = _decode(src.read(img_rel), img_rel, "RGB")
        lab = _decode(src.read(lab_rel), lab_rel, "L")
        if img.shape[:2] != lab.shape:
            raise ValueError(
                f"CamVid: {img_rel} is {img.shape[:2]} but its label {lab_rel} is {lab.shape}."
            )
        if images and img.shape != images[0].shape:
            raise ValueError(
                f"CamVid: {img_rel} has size {img.shape[:2]}, the split's first image "
                f"{images[0].shape[:2]}; all images of a split must share one size."
            )
        if lab.max() > IGNORE_LABEL:
            raise ValueError(
                f"CamVid: label {lab_rel} holds value {int(lab.max())}; expected class "
                f"indices 0..{IGNORE_LABEL}."
            )
        images.append(img)
        labels.append(lab)
        names.append(os.path.splitext(os.path.basename(img_rel))[0])
    if not images:
        raise ValueError(f"CamVid: {split}.txt lists no images.")
    return SegSplit(np.stack(images), np.stack(labels), tuple(names))


def load_camvid(path: str | None = None, splits=SPLITS, *, cache_dir: str | None = None,
                limit: int | None = None, use_cache: bool = True) -> dict[str, SegSplit]:
    """Read CamVid splits from a folder or zip, decoding once and caching as npz.

    **Arguments:**

    - `path`: the zip or folder; default ``$JAXODE_DATA/camvid-segnet.zip``.
    - `splits`: which of train / val / test to return.
    - `cache_dir`: the cache folder (`jaxode.data.cache.default_cache_dir`).
    - `limit`: read only the first `limit` images of each split (tests, quick runs).
    - `use_cache`: read and write the cache (False: always decode).

    **Returns:** a dict split -> `SegSplit(images, labels, names)`.
    """
    if path is None:
        root = os.environ.get("JAXODE_DATA")
        if not root:
            raise FileNotFoundError(
                "CamVid: no path given and JAXODE_DATA is not set; pass the folder or "
                "camvid-segnet.zip, or set JAXODE_DATA to the folder that holds the zip."
            )
        path = os.path.join(root, "camvid-segnet.zip")
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"CamVid: unknown split {s!r}; choose from {SPLITS}.")
    src = _Source(path)
    return {split: cached(lambda split=split: _read_split(src, split, limit), reader="camvid",
                          source=src.path, split=split, options={"limit": limit},
                          cache_dir=cache_dir, enabled=use_cache, to_arrays=_split_arrays,
                          from_arrays=_split_from_arrays)
            for split in splits}


def _split_arrays(split: SegSplit) -> dict[str, np.ndarray]:
    return dict(images=split.images, labels=split.labels, names=np.array(split.names, dtype=str))


def _split_from_arrays(z: dict[str, np.ndarray]) -> SegSplit:
    return SegSplit(z["images"], z["labels"], tuple(str(n) for n in z["names"]))


# -------------------------------------------------------------------- on the device


def normalize(images):
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W), ImageNet mean/std normalised."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(MEAN)) / jnp.asarray(STD)
    return jnp.moveaxis(x, -1, -3)


def augment(key, image, label, crop: tuple[int, int], scale=(0.5, 2.0),
            flip: bool = True, ignore_label: int = IGNORE_LABEL):
    """Random scale, crop and horizontal flip of one example, on the device.

    `image` (H, W, 3) uint8 or float, `label` (H, W) integers.  The image is resampled
    by bilinear interpolation and the label by nearest neighbour at once into a
    `crop` = (h, w) window of the image scaled by s ~ U[scale]; the window's offset is
    uniform over the positions that keep it inside the scaled image (or, where the
    scaled image is smaller than the crop, that keep the image inside the window, the
    rest padded with 0 and the ignore label).  Returns (float32 (h, w, 3), int32 (h, w)).
    """
    from jax.scipy.ndimage import map_coordinates

    h, w = image.shape[:2]
    ch, cw = crop
    k_s, k_y, k_x, k_f = jax.random.split(key, 4)
    s = jax.random.uniform(k_s, (), jnp.float32, scale[0], scale[1])

    def offset(k, n, c):
        span = n * s - c
        lo, hi = jnp.minimum(span, 0.0), jnp.maximum(span, 0.0)
        return jnp.floor(jax.random.uniform(k, (), jnp.float32, lo, hi + 1e-6))

    oy, ox = offset(k_y, h, ch), offset(k_x, w, cw)
    yy = (jnp.arange(ch, dtype=jnp.float32) + oy + 0.5) / s - 0.5
    xx = (jnp.arange(cw, dtype=jnp.float32) + ox + 0.5) / s - 0.5
    if flip:
        do_flip = jax.random.bernoulli(k_f)
        xx = jnp.where(do_flip, xx[::-1], xx)
    gy, gx = jnp.meshgrid(yy, xx, indexing="ij")
    inside = (gy > -0.5) & (gy < h - 0.5) & (gx > -0.5) & (gx < w - 0.5)
    img = image.astype(jnp.float32)
    out = jnp.stack(
        [map_coordinates(img[..., c], [gy, gx], order=1, mode="nearest") for c in range(img.shape[-1])],
        axis=-1,
    )
    out = jnp.where(inside[..., None], out, 0.0)
    lab = map_coordinates(label.astype(jnp.float32), [gy, gx], order=0, mode="nearest")
    lab = jnp.where(inside, lab, float(ignore_label)).astype(jnp.int32)
    return out, lab


def colorize(label: np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours; indices past the palette are
    drawn black."""
    label = np.asarray(label)
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[np.clip(label, 0, 255).astype(np.uint8)]
