"""Segmentation loss and metrics (Khoshsirat & Kambhamettu, Sec. 4: mIoU).

- `confusion_matrix(labels, preds, K, ignore)`: C[a, p] = number of pixels with true
  class a and predicted class p, over pixels whose label is in [0, K) and not `ignore`.
  Matrices add over batches, so a whole split's mIoU comes from one accumulated C.
- `iou_from_confusion(C)`: IoU_k = C_kk / (sum_p C_kp + sum_a C_ak - C_kk); NaN for a
  class that appears neither in the labels nor in the predictions.
- `miou`: the mean of the IoUs that are not NaN.
- `cross_entropy(logits, labels, ignore)`: mean per-pixel cross entropy over the
  labelled pixels (the ignore label contributes nothing).
- `split_confusion(predict, images, labels, ...)`: a whole split's confusion matrix
  (one per trajectory time when the predictions carry a time axis) from batches of
  one compiled shape, with the forward NFE of every batch.
- `median_time(fn, *args)`: wall time of a compiled call, median over repeats after a
  warm-up call (which compiles), for the solve-time trade-off of Sec. 4.8.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, preds, num_classes: int, ignore_label: int | None = None):
    """Confusion matrix (num_classes, num_classes), int32, rows = true class.

    `labels` and `preds` are integer arrays of the same shape (any batch layout).
    Labels equal to `ignore_label` or outside [0, num_classes) are skipped; a
    prediction outside [0, num_classes) raises at trace time only if shapes differ,
    so callers should pass argmax outputs.
    """
    labels = jnp.asarray(labels)
    preds = jnp.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(
            f"confusion_matrix: labels {labels.shape} and predictions {preds.shape} must "
            "have the same shape."
        )
    labels = labels.astype(jnp.int32).ravel()
    preds = preds.astype(jnp.int32).ravel()
    valid = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
    if ignore_label is not None:
        valid = valid & (labels != ignore_label)
    index = jnp.where(valid, labels * num_classes + preds, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes ** 2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def iou_from_confusion(cm) -> np.ndarray:
    """Per-class IoU (float64 NumPy), NaN where the class is absent from both."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def miou(cm) -> float:
    """Mean IoU over the classes present in labels or predictions."""
    iou = iou_from_confusion(cm)
    return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def pixel_accuracy(cm) -> float:
    cm = np.asarray(cm, np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def cross_entropy(logits, labels, ignore_label: int | None = None):
    """Mean cross entropy over labelled pixels.

    `logits`: (..., K, H, W) class scores; `labels`: (..., H, W) integers.  Pixels whose
    label equals `ignore_label` or lies outside [0, K) are left out of the mean.
    """
    k = logits.shape[-3]
    logp = jax.nn.log_softmax(logits, axis=-3)
    labels = labels.astype(jnp.int32)
    valid = (labels >= 0) & (labels < k)
    if ignore_label is not None:
        valid = valid & (labels != ignore_label)
    safe = jnp.where(valid, labels, 0)
    picked = jnp.take_along_axis(logp, safe[..., None, :, :], axis=-3)[..., 0, :, :]
    n = jnp.maximum(jnp.sum(valid), 1)
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / n.astype(logits.dtype)


def split_confusion(predict: Callable, images: np.ndarray, labels: np.ndarray,
                    num_classes: int, ignore_label: int | None, batch: int):
    """Confusion matrices of a whole split, accumulated over batches.

    `predict(images_batch) -> (preds, nfe)`: preds (B, H, W) or (B, T, H, W) integer
    classes (T times along a trajectory), nfe the batch's forward NFE (None for a
    network without a solver).  The last batch is padded with copies of the first
    image whose labels are all `ignore_label` (one compiled shape; padded pixels count
    for nothing), so `ignore_label` must be given when `len(images) % batch != 0`.

    Returns ``(cm, preds, nfes)``: cm (K, K), or (T, K, K) with a time axis; the
    predictions of the real images; the NFE of each batch (empty without a solver).
    """
    n = len(images)
    if n == 0:
        raise ValueError("split_confusion: the split holds no images.")
    cms, preds_out, nfes = None, [], []
    for start in range(0, n, batch):
        imgs, labs = images[start:start + batch], labels[start:start + batch]
        pad = batch - len(imgs)
        if pad:
            if ignore_label is None:
                raise ValueError("split_confusion: padding the last batch needs an ignore_label.")
            imgs = np.concatenate([imgs, np.repeat(imgs[:1], pad, 0)])
            labs = np.concatenate([labs, np.full((pad,) + labs.shape[1:], ignore_label,
                                                 labs.dtype)])
        preds, nfe = predict(jnp.asarray(imgs))
        if preds.ndim == labs.ndim:
            cm = confusion_matrix(labs, preds, num_classes, ignore_label)
        else:
            cm = jnp.stack([confusion_matrix(labs, preds[:, k], num_classes, ignore_label)
                            for k in range(preds.shape[1])])
        cms = cm if cms is None else cms + cm
        preds_out.append(np.asarray(preds[: batch - pad]))
        if nfe is not None:
            nfes.append(float(jnp.mean(nfe)))
    return np.asarray(cms), np.concatenate(preds_out), nfes


def median_time(fn: Callable, *args, repeats: int = 5):
    """``(median seconds, all times, output)`` of `fn(*args)` over `repeats` timed calls
    after one untimed warm-up call (the compile); each call is waited for with
    `jax.block_until_ready`."""
    if repeats < 1:
        raise ValueError(f"median_time: repeats must be >= 1, got {repeats}.")
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times, out
