"""Training runs of deep continuous networks (Tomen, Pintea & van Gemert, ICML 2021,
supplement A.2): the paper's optimiser settings, the data a DCN classifier can train
on, and the ``summary.json`` of a finished run.  ``python -m experiments.dcn`` trains
through `jaxode.train.fit` with these.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["check_training_data", "paper_train_config", "write_summary"]


def paper_train_config(cfg: dict, *, seed: int, progress: bool = True, eval_every: int = 1):
    """The paper's SGD for `cfg` (epochs, batch_size, lr, milestones): momentum 0.9, no
    weight decay, lr x0.1 at each milestone epoch (constant without milestones), one
    device (`jaxode.train.TrainConfig`)."""
    from jaxode.train import TrainConfig

    return TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                       momentum=0.9, weight_decay=0.0,
                       lr_schedule="step" if cfg["milestones"] else "constant",
                       milestones=tuple(cfg["milestones"]), gamma=0.1, seed=seed,
                       progress=progress, data_parallel=False, eval_every=eval_every)


def check_training_data(train, test, batch_size: int) -> None:
    """Raise ValueError, saying what to pass instead, for data a DCN classifier cannot
    train on: fewer training images than one batch (the last partial batch is dropped),
    one class, an empty test set, or images that are not RGB of at most 10 classes
    (the CIFAR-10 layout the models are built for)."""
    n, classes = len(train), len(np.unique(train.labels))
    if n < batch_size:
        raise ValueError(f"--batch-size {batch_size} is larger than the training set ({n} "
                         f"images); pass --batch-size {max(n, 1)} or less, or use more "
                         "training images (--train-limit, --per-class).")
    if classes < 2:
        raise ValueError(f"the training set {train.name!r} has {classes} class; a classifier "
                         "needs at least two (check --data-root).")
    if len(test) == 0:
        raise ValueError(f"the test set {test.name!r} is empty; check --data-root and "
                         "--test-limit.")
    for ds in (train, test):
        if ds.image_shape[-1] != 3 or ds.num_classes > 10:
            raise ValueError(f"{ds.name!r} has images {ds.image_shape} and {ds.num_classes} "
                             "classes; these models take RGB (H, W, 3) images of at most 10 "
                             "classes (CIFAR-10 layout).")


def write_summary(run_path: str, result, about: dict, train, test) -> dict:
    """``RUN/summary.json`` of a finished `jaxode.train.fit` `result`: `about`, the
    parameter count, the data sizes and the SRF layers whose support was truncated
    (`jaxode.nn.srf.support_overflow`).  Returns the summary."""
    from jaxode.nn.srf import support_overflow
    from jaxode.train.utils import count_params

    summary = {**about, "params": count_params(result.model), "train_images": len(train),
               "test_images": len(test), "support_overflow": support_overflow(result.model)}
    with open(os.path.join(run_path, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
