"""Tasks beside classification, for `jaxode.train.fit` (contract in `jaxode.train`).

- `SegmentationTask`: per-pixel cross-entropy, scored by mIoU (Khoshsirat &
  Kambhamettu, Sec. 4.1: random scale, crop and flip; ImageNet normalisation).
- `DensityTask`: maximum likelihood of a continuous normalizing flow, scored by the
  negative log-likelihood and bits per dimension (Chen et al. 2018, Sec. 4; He, Xie,
  Lin 2019, Sec. 4.3).
- `RegressionTask`: fit a trajectory, loss = sum_i ||x(t_i) - y_i||^2 (He, Xie, Lin
  2019, Sec. 4.1).

A task may define ``summarise(per_example) -> {name: float}`` for set-level metrics
that are not means of per-example values (mIoU); `fit` and `evaluate` use it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxode.ode._regularize import regularizer_stats
from jaxode.train.seg_metrics import confusion_matrix, cross_entropy, miou, pixel_accuracy
from jaxode.train.utils import solver_metrics


@dataclasses.dataclass(frozen=True)
class SegmentationTask:
    """Semantic segmentation with per-pixel cross-entropy over labelled pixels.

    Batches: ``{"image": uint8 (N, H, W, 3), "label": int (N, H, W)}``, optionally
    ``"aug_key"``: one PRNG key per example (N, 2) for the augmentation (to tie the
    random crops to a run's own step counter; default: drawn from the step's key).
    The model is called as ``model.batched(x) -> (logits (N, K, H, W), stats)`` with
    x ImageNet-normalised float32 (N, 3, H, W) (`SegNode`, `HRResidualNet`); `stats`
    is a `SolveStats` or None.

    Training: random scale in `scale`, crop to `crop` and horizontal flip per
    example (`jaxode.data.camvid.augment`); metrics ``loss``, ``nfe``, ``steps``.
    Evaluation (no augmentation): per-example confusion matrices, summarised as
    ``miou`` and ``pixel_acc`` over the whole set, and the mean ``nfe``.
    """

    num_classes: int
    ignore_label: int | None
    crop: tuple[int, int]
    scale: tuple[float, float] = (0.5, 2.0)

    def train_loss(self, model, batch, key):
        from jaxode.data import camvid

        images, labels = batch["image"], batch["label"]
        keys = batch.get("aug_key")
        if keys is None:
            keys = jax.random.split(key, images.shape[0])
        x, y = jax.vmap(lambda k, i, lab: camvid.augment(
            k, i, lab, self.crop, self.scale, ignore_label=self.ignore_label))(keys, images, labels)
        logits, stats = model.batched(camvid.normalize(x))
        loss = cross_entropy(logits, y, self.ignore_label)
        return loss, {"loss": loss, **solver_metrics(stats)}

    def eval_metrics(self, model, batch, key):
        from jaxode.data import camvid

        labels = batch["label"]
        logits, stats = model.batched(camvid.normalize(batch["image"]))
        preds = jnp.argmax(logits, axis=-3)
        cms = jax.vmap(lambda lab, p: confusion_matrix(
            lab, p, self.num_classes, self.ignore_label))(labels, preds)
        return {"confusion": cms, **solver_metrics(stats, labels.shape[0])}

    def summarise(self, per_example):
        cm = np.asarray(per_example["confusion"]).sum(0)
        return {"miou": miou(cm), "pixel_acc": pixel_accuracy(cm),
                "nfe": float(np.mean(per_example["nfe"]))}


@dataclasses.dataclass(frozen=True)
class DensityTask:
    """Maximum likelihood: loss = NLL = -mean_i log p(x_i).

    Batches: ``{"x": float32 (N, D)}``.  The model is a flow with
    ``log_prob_batched(x, key=None) -> (log p (N,), SolveStats)`` (`jaxode.fields.cnf.CNF`);
    the step's key draws its Hutchinson probes, if any.  Evaluation uses the exact
    trace (`exact_eval`, via ``model.with_trace("exact")``) and gives per example
    ``nll`` and ``bits_per_dim`` = nll / (D ln 2) (continuous data: no dequantisation
    term), and the solver's ``nfe``.  Training metrics include the regularisers the
    flow's solve computed (``kinetic``, ``jacobian``: batch means), which
    `TrainConfig.regularizers` adds to the loss.
    """

    exact_eval: bool = True

    def train_loss(self, model, batch, key):
        logp, stats = model.log_prob_batched(batch["x"], key=key)
        nll = -jnp.mean(logp)
        dims = batch["x"].shape[-1]
        return nll, {"loss": nll, "bits_per_dim": nll / (dims * math.log(2.0)),
                     **solver_metrics(stats),  # and RNODE's terms when requested:
                     **{k: jnp.mean(v) for k, v in regularizer_stats(stats).items()}}

    def eval_metrics(self, model, batch, key):
        flow = model.with_trace("exact") if self.exact_eval else model
        logp, stats = flow.log_prob_batched(batch["x"], key=None if self.exact_eval else key)
        dims = batch["x"].shape[-1]
        return {"nll": -logp, "bits_per_dim": -logp / (dims * math.log(2.0)),
                **solver_metrics(stats, logp.shape[0])}


@dataclasses.dataclass(frozen=True)
class RegressionTask:
    """Trajectory fitting: loss = sum_i ||x(t_i) - y_i||^2 (or its mean with
    ``reduction="mean"``).

    Batches: ``{"x": the initial state, "ts": (T,) times, "y": (T, ...) targets}``; the
    model is called as ``model(x, ts=ts) -> (x(ts), SolveStats)`` (an `ODEBlock` with
    dense output).  Metrics ``loss``, ``mse``, ``nfe``, ``steps``; evaluation gives the
    squared error summed over the state at each time (T,).
    """

    reduction: str = "sum"

    def __post_init__(self):
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"RegressionTask: reduction must be 'sum' or 'mean', got "
                             f"{self.reduction!r}.")

    def _errors(self, model, batch):
        pred, stats = model(batch["x"], ts=batch["ts"])
        return (pred - batch["y"]) ** 2, stats

    def train_loss(self, model, batch, key):
        sq, stats = self._errors(model, batch)
        loss = jnp.sum(sq) if self.reduction == "sum" else jnp.mean(sq)
        return loss, {"loss": loss, "mse": jnp.mean(sq), **solver_metrics(stats)}

    def eval_metrics(self, model, batch, key):
        sq, stats = self._errors(model, batch)
        per_time = jnp.sum(sq.reshape(sq.shape[0], -1), axis=1)
        return {"sq_error": per_time, **solver_metrics(stats, per_time.shape[0])}
