"""Training pieces of SegNode and its baseline that `jaxode.train.fit` is given
(Khoshsirat & Kambhamettu, Sec. 4.1).

- `paper_optimizer`: SegNode SGD (momentum 0.9, no weight decay), the baseline AdamW
  (weight decay 0.05), both with the polynomial decay of power 0.9 to zero.
- `EpochBatches`: the training batches of one epoch, reproducible from (seed, epoch)
  and (key, step), so an interrupted and resumed run trains as an uninterrupted one.
- `ModelRun`: the part of a run folder one of several models trains in.
"""

from __future__ import annotations

import functools
import os

import equinox as eqx
import jax
import numpy as np
import optax

from jaxode.ode import trainable
from jaxode.train.checkpoint import load_newest_intact

__all__ = ["MODELS", "paper_optimizer", "EpochBatches", "ModelRun", "metrics_row", "restore"]

MODELS = ("segnode", "baseline")


@functools.lru_cache(maxsize=8)
def paper_optimizer(name: str, lr: float, weight_decay: float, total_steps: int):
    """``(optax optimiser, learning-rate schedule)`` of Sec. 4.1 for model `name`:
    lr * (1 - step / total_steps) ** 0.9 with SGD (momentum 0.9) for ``segnode``, AdamW
    (`weight_decay`) for ``baseline``.  Cached, so runs in one process with the same
    settings (a resumed run) reuse one compiled training step."""
    if name not in MODELS:
        raise ValueError(f"unknown segmentation model {name!r}; choose one of {', '.join(MODELS)}.")
    sched = optax.polynomial_schedule(lr, 0.0, 0.9, max(total_steps, 1))
    if name == "segnode":
        return optax.sgd(sched, momentum=0.9), sched
    return optax.adamw(sched, weight_decay=weight_decay), sched


class EpochBatches:
    """Training batches of epoch e (1-based) of `split` (a `SegSplit`): a permutation
    fixed by (seed, e), and per-example augmentation keys from the step counter,
    fold_in(key, (e - 1) * per_epoch + b).  Each batch is a dict ``image``, ``label``,
    ``aug_key`` for `jaxode.train.SegmentationTask`."""

    def __init__(self, split, batch_size: int, per_epoch: int, seed: int, key, epoch: int):
        self.split, self.bs, self.per_epoch, self.key, self.epoch = (
            split, batch_size, per_epoch, key, epoch)
        self.order = np.random.default_rng((seed, epoch)).permutation(len(split.images))

    def __len__(self):
        return self.per_epoch

    def __iter__(self):
        for b in range(self.per_epoch):
            idx = np.sort(self.order[b * self.bs:(b + 1) * self.bs])
            step_key = jax.random.fold_in(self.key, (self.epoch - 1) * self.per_epoch + b)
            yield {"image": self.split.images[idx], "label": self.split.labels[idx],
                   "aug_key": jax.random.split(step_key, len(idx))}


class ModelRun:
    """The part of a `jaxode.train.rundir.RunDir` that model `name` trains in, as
    `jaxode.train.fit` uses a run: checkpoints in ``checkpoints/<name>/``, and its
    metrics rows (`to_row` of each history row) written to the run's metrics.csv
    after `rows_before`, those of the models trained before it."""

    def __init__(self, run, name: str, rows_before: list, to_row):
        self.path, self.run, self.name, self.writer = run.path, run, name, run.writer
        self.checkpoints = os.path.join(run.checkpoints, name)
        self.steps_csv = os.path.join(run.path, f"{name}_steps.csv")  # one per model
        self.rows_before, self.to_row = list(rows_before), to_row

    def write_history(self, history, *, final: bool = False):
        self.run.write_history(self.rows_before + [self.to_row(r) for r in history],
                               final=final)


def metrics_row(name: str, row: dict, lr: float) -> dict:
    """A row of `jaxode.train.fit`'s history as the segmentation run's metrics.csv
    writes it: model, epoch, train loss, val mIoU and pixel accuracy, learning rate,
    epoch time, and SegNode's forward / backward NFE."""
    out = dict(model=name, epoch=row["epoch"], train_loss=row["train_loss"],
               val_miou=row["eval_miou"], val_pixel_acc=row["eval_pixel_acc"], lr=lr,
               epoch_time_s=row["train_time_s"])
    if name == "segnode":
        out.update(nfe_forward=row["train_nfe"], nfe_backward=row["train_nfe_backward"])
    return out


def restore(folder: str, model, optimizer):
    """``(epoch, model)`` with the weights of the newest intact checkpoint in `folder`
    (a damaged newest one falls back to an older one); `model` and `optimizer` give
    the structure the checkpoint is read into.  FileNotFoundError when there is none."""
    opt_state = optimizer.init(eqx.filter(model, trainable(model)))
    found = load_newest_intact(folder, lambda _: (model, opt_state))
    if found is None:
        raise FileNotFoundError(f"{folder} holds no checkpoint; train the model first "
                                "(python -m experiments.segment --models NAME).")
    return found[0], found[1][0]
