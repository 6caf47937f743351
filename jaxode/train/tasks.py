"""Tasks: what a batch is and what is minimised (see `jaxode.train` for the contract).

`ClassificationTask` is image classification with cross-entropy, as in Chen et al.
(2018, Sec. 7.1), Carrara et al. (Sec. 4) and Tomen et al. (Sec. 4): batches are
``{"image": uint8 (N, H, W, C), "label": int32 (N,)}``; augmentation runs on the device
inside the jitted step; the model receives float32 ``(N, C, H, W)`` in [0, 1]
(optionally normalised per channel).  The other tasks -- segmentation (mIoU),
density estimation (NLL, bits/dim) and trajectory regression -- are in
`jaxode.train.more_tasks`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxode.data import augment as aug
from jaxode.data import iterate_batches
from jaxode.ode import REGULARIZERS
from jaxode.train.utils import solver_metrics


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy classification.

    **Arguments:**

    - `crop_padding`: random crop back to the input size after zero-padding this many
      pixels per side (0 = off; Chen et al. use 4 on MNIST, Carrara et al. 4 on CIFAR).
    - `flip`: random horizontal flips (CIFAR; never for digits).
    - `color_jitter`: (brightness, contrast, saturation) strengths of random colour
      changes (None = off; Carrara et al. use colour jitter on CIFAR-10).
    - `mean`, `std`: per-channel normalisation after scaling to [0, 1] (None = off,
      the papers' MNIST/DCN setting).
    - `label_smoothing`: 0 for the papers.

    Training metrics (batch means): ``loss``, ``acc``, ``nfe`` and ``steps`` (forward
    solver statistics summed over ODE blocks, from the model's ``aux``), and any
    regulariser the model reports (`jaxode.ode.REGULARIZERS`).  Evaluation
    metrics are per example: ``loss``, ``acc`` (0 or 1), ``pred``, ``nfe``, ``steps``.
    """

    crop_padding: int = 0
    flip: bool = False
    color_jitter: tuple[float, float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    def prepare(self, images, key, train: bool):
        """uint8 NHWC -> float32 NCHW model input, augmented when `train`."""
        k_crop, k_flip, k_jit = jax.random.split(key, 3)
        x = images
        if train and self.crop_padding:
            x = aug.random_crop(k_crop, x, self.crop_padding)
        if train and self.flip:
            x = aug.random_flip(k_flip, x)
        if train and self.color_jitter is not None and any(self.color_jitter):
            x = aug.color_jitter(k_jit, x, *self.color_jitter)
        x = aug.to_model_input(x)
        if self.mean is not None:
            x = aug.normalize(x, self.mean, self.std)
        return x

    def _logits(self, model, batch, key, train):
        k_aug, k_model = jax.random.split(key)
        x = self.prepare(batch["image"], k_aug, train)
        return model(x, key=k_model, inference=not train)

    def _xent(self, logits, labels):
        n_cls = logits.shape[-1]
        onehot = jax.nn.one_hot(labels, n_cls, dtype=logits.dtype)
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / n_cls
        return optax.softmax_cross_entropy(logits, onehot)

    def train_loss(self, model, batch, key):
        logits, aux = self._logits(model, batch, key, train=True)
        labels = batch["label"]
        n = labels.shape[0]
        loss = jnp.mean(self._xent(logits, labels))
        acc = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        metrics = {"loss": loss, "acc": acc,
                   **{k: jnp.mean(v) for k, v in solver_metrics(aux, n).items()}}
        for name in REGULARIZERS:  # differentiable: the trainer adds them to the loss
            if isinstance(aux, dict) and name in aux:
                metrics[name] = jnp.mean(aux[name])
        return loss, metrics

    def eval_metrics(self, model, batch, key):
        logits, aux = self._logits(model, batch, key, train=False)
        labels = batch["label"]
        n = labels.shape[0]
        pred = jnp.argmax(logits, -1)
        return {
            "loss": self._xent(logits, labels),
            "acc": (pred == labels).astype(jnp.float32),
            "pred": pred.astype(jnp.int32),
            **solver_metrics(aux, n),
        }


class dataset_batches:
    """An epoch of ``{"image", "label"}`` batches from a `jaxode.data.Dataset`, with a
    length (for progress bars).  `seed` (int or tuple of ints, e.g. ``(seed, epoch)``)
    fixes the shuffle order."""

    def __init__(self, dataset, batch_size: int, *, seed=0, shuffle: bool = True,
                 drop_last: bool = False, limit: int | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        if isinstance(seed, (tuple, list)):
            k = jax.random.PRNGKey(int(seed[0]))
            for s in seed[1:]:
                k = jax.random.fold_in(k, int(s))
            seed = k
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.limit = limit

    def __len__(self):
        n = len(self.dataset)
        full, rest = divmod(n, self.batch_size)
        count = full + (0 if self.drop_last or rest == 0 else 1)
        return count if self.limit is None else min(count, self.limit)

    def __iter__(self):
        it = iterate_batches(self.dataset, self.batch_size, key_or_seed=self.seed,
                             shuffle=self.shuffle, drop_last=self.drop_last)
        for i, (images, labels) in enumerate(it):
            if self.limit is not None and i >= self.limit:
                break
            yield {"image": images, "label": labels}
